#!/usr/bin/env bash
# Runs once, when the postgres container starts on an empty data volume
# (/docker-entrypoint-initdb.d): one login role and one database each for Prefect and MLflow,
# so neither server can touch the other's tables. Passwords come from the container's
# environment (infra/compose.yaml) and reach psql as variables, quoted by psql itself.
set -euo pipefail

: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"

create_database() {  # name (role and database), password
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        --set=name="$1" --set=password="$2" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
}

create_database prefect "$PREFECT_DB_PASSWORD"
create_database mlflow "$MLFLOW_DB_PASSWORD"

# Prefect's migrations create pg_trgm; create it here as the superuser, so they never need to.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname prefect -c 'CREATE EXTENSION IF NOT EXISTS pg_trgm;'

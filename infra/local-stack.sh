#!/usr/bin/env bash
# The production stack, natively on 127.0.0.1 and without Docker (what `make stack` runs):
# PostgreSQL, S3 (moto standing in for MinIO), the Prefect and MLflow servers on PostgreSQL, and a
# Prefect process work pool with one worker. The work is done by adaptflow/stack.py.
#
#   infra/local-stack.sh start [--state-dir .stack] [--project .]   # then: source .stack/env
#   infra/local-stack.sh status
#   infra/local-stack.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/python" -m adaptflow.stack "$@"

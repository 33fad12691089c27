#!/usr/bin/env bash
# The production stack, natively on 127.0.0.1 and without Docker (what `make stack` runs):
# PostgreSQL, S3 (moto standing in for MinIO), the Prefect and MLflow servers on PostgreSQL, and a
# Prefect process work pool with one worker. The same as `adaptflow stack up|status|down`; the work is
# done by adaptflow/app/stack.py.
#
#   infra/local-stack.sh up [--state-dir .stack] [--project .]   # then: source .stack/env  (start works too)
#   infra/local-stack.sh status
#   infra/local-stack.sh down                                    # (stop works too)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/python" -m adaptflow.app.stack "$@"

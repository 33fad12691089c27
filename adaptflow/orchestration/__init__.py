"""The Prefect layer: `tasks/` wrap the core stages (retries, names, logging), `flows/` only sequence tasks.

The core (`adaptflow` minus `app` and `orchestration`) never imports this package, and tasks never import
flows (tests/test_contracts.py). The repository's top-level `flows/` and `tasks/` folders are thin entry
points onto these modules (prefect.yaml names `flows/NAME.py:FLOW`); they are not part of the wheel.

Importing this package (as importing any of its modules does, first) applies adaptflow's offline defaults
before Prefect is imported, and has Prefect log a run that fails on bad input (a UserError) by its message,
without a traceback.
"""

import logging

from adaptflow import env, errors

env.apply()
errors.quiet_run_logs()
# adaptflow's INFO lines (epochs, metrics, the gate's decision) reach the flow run's log: Prefect sends the
# `adaptflow` logger to its API (env.apply sets PREFECT_LOGGING_EXTRA_LOGGERS), at the level the logger lets through.
if logging.getLogger(env.LOGGER).level == logging.NOTSET:
    logging.getLogger(env.LOGGER).setLevel(logging.INFO)

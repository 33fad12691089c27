"""Prefect tasks: thin wrappers that give each core stage retries, names and logging.

Importing this package applies adaptflow's offline defaults before Prefect is imported, and has
Prefect log a run that fails on bad input (a UserError) by its message, without a traceback.
Tasks pass small values (paths, hashes, URIs, metric dicts), never tensors or models.
"""

import logging

from adaptflow import env, errors

env.apply()
errors.quiet_run_logs()
# adaptflow's INFO lines (epochs, metrics, the gate's decision) reach the flow run's log: Prefect sends the
# `adaptflow` logger to its API (env.apply sets PREFECT_LOGGING_EXTRA_LOGGERS), at the level the logger lets through.
if logging.getLogger(env.LOGGER).level == logging.NOTSET:
    logging.getLogger(env.LOGGER).setLevel(logging.INFO)

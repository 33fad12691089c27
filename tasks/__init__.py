"""Prefect tasks: thin wrappers that give each core stage retries, names and logging.

Importing this package applies adaptflow's offline defaults before Prefect is imported, and has
Prefect log a run that fails on bad input (a UserError) by its message, without a traceback.
Tasks pass small values (paths, hashes, URIs, metric dicts), never tensors or models.
"""

from adaptflow import env, errors

env.apply()
errors.quiet_run_logs()

"""Prefect tasks: thin wrappers that give each core stage retries, names and logging.

Importing this package applies adaptflow's offline defaults before Prefect is imported.
Tasks pass small values (paths, hashes, URIs, metric dicts), never tensors or models.
"""

from adaptflow import env

env.apply()

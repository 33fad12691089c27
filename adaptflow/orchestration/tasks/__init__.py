"""Prefect tasks: thin wrappers that give each core stage retries, names and logging.

Tasks pass small values (paths, hashes, URIs, metric dicts), never tensors or models. They never
import the flows (the flows compose them).
"""

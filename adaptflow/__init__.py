"""adaptflow: transfer learning in production.

The core library: plain Python and torch, no orchestration. `tasks/` wraps its stage functions
as Prefect tasks and `flows/` composes them; `dvc.yaml` calls the same functions through the CLI.
"""

__version__ = "0.1.0"

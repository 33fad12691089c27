"""What the user can fix, told apart from bugs.

A `UserError` names the file, field or service at fault and the fix in its message. The command
line shows it as one line and exits 2; Prefect's run logs show its message without a traceback,
which would only point into adaptflow's code. Every other exception is a bug and keeps its
traceback everywhere.
"""

from __future__ import annotations

import logging

#: The loggers on which Prefect reports failed task and flow runs, traceback attached.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class UserError(Exception):
    """Bad input, or a store or service that is not there; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A configuration the user wrote cannot be used; the message names the field and the fix."""


class ModelFileError(UserError, ValueError):
    """A model file that cannot, or must not, be loaded (pickled code, not a model file); the message names the file and the fix."""


class _UserErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = record.exc_text = None
        return True


def quiet_run_logs() -> None:
    """Log a run that fails with a UserError as its message alone (idempotent)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(_UserErrorsWithoutTraceback())

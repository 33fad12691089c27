"""What the user can fix, told apart from bugs, and the exit status of each kind of failure.

A `UserError` names the file, field or service at fault and the fix in its message. The command
line shows it as one line and exits with its `exit_code`, so that a script can tell an invalid config
from a server that is down or a download that failed; Prefect's run logs show its message without a
traceback, which would only point into adaptflow's code. Every other exception is a bug and keeps
its traceback everywhere.
"""

from __future__ import annotations

import logging
from enum import IntEnum

#: The loggers on which Prefect reports failed task and flow runs, traceback attached.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class ExitCode(IntEnum):
    """The exit status of `adaptflow`: one per kind of failure (see `EXIT_CODES`)."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    INVALID_INPUT = 3
    UNREACHABLE = 4
    FETCH_FAILED = 5
    RUN_FAILED = 6


#: What each exit status means, for `adaptflow --help` and docs/cli.md.
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.UNEXPECTED: "an unexpected error outside a run (a bug): the traceback is printed",
    ExitCode.USAGE: "the command line: an unknown command or option, a missing argument, a value not among the choices",
    ExitCode.INVALID_INPUT: "invalid config or data: a config field, an override, a data folder, a model file, a run folder "
                            "or a registry request that cannot be used as given",
    ExitCode.UNREACHABLE: "a service does not answer: the Prefect API (PREFECT_API_URL) or the MLflow tracking server",
    ExitCode.FETCH_FAILED: "download or integrity failure: pretrained weights that cannot be fetched, or whose sha256 "
                           "does not match, or a file refused as unsafe to load",
    ExitCode.RUN_FAILED: "a run failed: a training stage, flow, benchmark or sweep stopped with an error (traceback printed)",
}


class UserError(Exception):
    """Bad input, or a store or service that is not there; the message says what to do."""

    exit_code: ExitCode = ExitCode.INVALID_INPUT


class ConfigError(UserError, ValueError):
    """A configuration the user wrote cannot be used; the message names the field and the fix."""


class ModelFileError(UserError, ValueError):
    """A model file that cannot, or must not, be loaded (pickled code, not a model file); the message names the file and the fix."""


class PredictError(UserError, ValueError):
    """The images or the model cannot be predicted on; nothing was written."""


class ServiceUnavailable(UserError, RuntimeError):
    """A server the command needs (the Prefect API, the MLflow tracking server) does not answer."""

    exit_code = ExitCode.UNREACHABLE


class RunFailed(Exception):
    """A training stage or flow stopped with an error that is not the user's input; `__cause__` holds it."""

    exit_code = ExitCode.RUN_FAILED


def exit_code_of(exc: BaseException) -> ExitCode:
    """The exit status a failure maps to (a bug: 1)."""
    if isinstance(exc, FileNotFoundError):  # a path the user gave
        return ExitCode.INVALID_INPUT
    return getattr(exc, "exit_code", ExitCode.UNEXPECTED) if isinstance(exc, (UserError, RunFailed)) else ExitCode.UNEXPECTED


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

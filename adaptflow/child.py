"""Run one function in a fresh Python process, relaying its per-epoch records as they come.

Some trainers keep state global to the process: Python's `random` and NumPy's generators, OpenMP
thread pools, CUDA contexts. A host such as Prefect's task runner has other threads drawing from
the same generators, so the same training would differ between a flow run and `dvc repro`. In a
child process of its own a run depends on its inputs only.

The call (function and arguments) and its result travel as files in a folder of the run, loaded with
pickle: they are written and read by this module only, never taken from users. Records arrive as
JSON lines, read while the child runs; the parent stays the only process that talks to MLflow.

    python -m adaptflow.child CALL_FILE    # what the parent starts

A process that is the only user of those generators (a stage command: no orchestrator, no other thread)
declares it with `in_this_process()`; `call` then runs the function in it, the same function with the
same records, without starting and importing a second Python.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: A record the child writes when it fails: the parent raises with its text.
ERROR_KEY = "__error__"
#: A record holding one of the child's log lines (logger name, level, message): the parent logs it again,
#: so that adaptflow's lines from the child reach wherever the parent's go (a Prefect flow run's log).
LOG_KEY = "__log__"
POLL_SECONDS = 0.2
_here = False


@contextmanager
def in_this_process() -> Iterator[None]:
    """Within it, `call` runs its function in this process: for a caller no other thread shares the
    process-global generators with (a stage command), where a child would only add a second start."""
    global _here
    before, _here = _here, True
    try:
        yield
    finally:
        _here = before


class ChildProcessError(RuntimeError):
    """The child process failed: its message (or exit status) is in the text."""


def call(fn: Callable[..., Any], folder: Path, /, *, on_record: Callable[[dict], None] | None = None, **kwargs: Any) -> Any:
    """`fn(**kwargs, emit=...)` in a child process; `on_record` gets each record `emit` was given.

    `fn` must be importable by name (a module-level function). If `on_record` raises, the child
    is stopped and the error propagates; if the child fails, `ChildProcessError` carries its
    traceback's last line and the full traceback follows on stderr.
    """
    if _here:
        return fn(**kwargs, emit=on_record or _ignore)
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    call_path, records_path, result_path = (folder / f"child.{name}" for name in ("call", "records.jsonl", "result"))
    result_path.unlink(missing_ok=True)
    records_path.write_text("")
    partial = call_path.with_name(call_path.name + ".partial")  # the child reads it once it is complete
    torch.save({"target": f"{fn.__module__}:{fn.__qualname__}", "kwargs": kwargs,
                "records": str(records_path), "result": str(result_path)}, partial)
    partial.replace(call_path)
    errors: list[str] = []

    def receive(record: dict) -> None:
        if ERROR_KEY in record:
            errors.append(record[ERROR_KEY])
        elif LOG_KEY in record:
            name, level, message = record[LOG_KEY]
            logging.getLogger(name).log(level, "%s", message)
        elif on_record is not None:
            on_record(record)

    process = subprocess.Popen([sys.executable, "-m", __name__, str(call_path)], env=os.environ.copy())
    try:
        watch(process, Relay(records_path, receive), stop=kill)
    finally:
        call_path.unlink(missing_ok=True)
    if process.returncode != 0 or not result_path.exists():
        raise ChildProcessError(errors[0] if errors else f"{fn.__qualname__} exited with status {process.returncode} and no result")
    result = torch.load(result_path, map_location="cpu", weights_only=False)  # noqa: S614 - written by this module
    result_path.unlink()
    records_path.unlink()
    return result


def watch(process: subprocess.Popen, relay: Relay, stop: Callable[[subprocess.Popen], None]) -> None:
    """Relay records until `process` exits. If relaying fails or the caller is interrupted, the
    process is stopped with `stop` first: it never outlives its caller."""
    try:
        while process.poll() is None:
            relay.poll()
            time.sleep(POLL_SECONDS)
        relay.poll()
    except BaseException:
        stop(process)
        raise


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


class Relay:
    """Hands each complete JSON line appended to `path` to `on_record`, once, in order."""

    def __init__(self, path: Path, on_record: Callable[[dict], None]) -> None:
        self.path, self.on_record, self.offset = path, on_record, 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as records:
            records.seek(self.offset)
            chunk = records.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            self.on_record(json.loads(line))


class LogRelay(logging.Handler):
    """Sends the child's log records to the parent as records of their own."""

    def __init__(self, emit: Emitter) -> None:
        super().__init__(logging.INFO)
        self.emit_record = emit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.emit_record({LOG_KEY: [record.name, record.levelno, record.getMessage()]})
        except Exception:  # noqa: BLE001 - a log line must never fail the training
            self.handleError(record)


class Emitter:
    """Appends records to the file the parent reads. It holds a path, not an open file, so a
    trainer that ships its callbacks to processes of its own (Ultralytics' DDP workers pickle
    them) can take it along and report from there."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, record: dict) -> None:
        with open(self.path, "a") as records:
            records.write(json.dumps(record) + "\n")


def _ignore(record: dict) -> None:
    pass


def main(call_path: str) -> int:
    import torch

    spec = torch.load(call_path, map_location="cpu", weights_only=False)  # noqa: S614 - written by `call`
    module, _, name = spec["target"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    emit = Emitter(spec["records"])
    logger = logging.getLogger("adaptflow")  # run as __main__: the package is named here
    logger.addHandler(LogRelay(emit))
    logger.setLevel(logging.INFO)
    try:
        result = fn(**spec["kwargs"], emit=emit)
    except BaseException as exc:
        traceback.print_exc()
        emit({ERROR_KEY: f"{type(exc).__name__}: {exc}"})
        return 1
    partial = Path(spec["result"] + ".partial")
    torch.save(result, partial)
    partial.replace(spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Training in a process of its own: records relayed while it runs, errors surfaced, and the
network guard following the tests into every child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netguard
from adaptflow import child

TESTS = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def importable_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child imports the functions below by name from this module."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ["PYTHONPATH"]]))


def count(n: int, emit) -> dict:  # noqa: ANN001 - the child's emit
    for i in range(n):
        emit({"epoch": i + 1, "pid": os.getpid()})
    return {"total": n, "pid": os.getpid()}


def fail_after_one(emit) -> None:  # noqa: ANN001
    emit({"epoch": 1})
    raise ValueError("batch size 0 is not a batch size")


def run_long(emit) -> None:  # noqa: ANN001
    emit({"epoch": 1})
    time.sleep(120)


def hand_to_another_process(emit) -> None:  # noqa: ANN001
    """What Ultralytics' DDP launch does with a trainer's callbacks: pickle them for processes of its own."""
    import cloudpickle

    with open(os.environ["HANDOFF"], "wb") as f:
        cloudpickle.dump(lambda epoch: emit({"epoch": epoch, "pid": os.getpid()}), f)
    load = f"import cloudpickle; cloudpickle.load(open({os.environ['HANDOFF']!r}, 'rb'))(7)"
    subprocess.run([sys.executable, "-c", load], check=True)


def log_an_epoch(emit) -> None:  # noqa: ANN001
    import logging

    logging.getLogger("adaptflow.detection.yolo").info("epoch 1/2: box_loss 1.5")
    logging.getLogger("ultralytics").info("not adaptflow's: stays in the child")


def test_the_childs_log_lines_are_logged_again_by_the_parent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """So that they reach the parent's handlers: a Prefect flow run's log shows a child's epochs."""
    import logging

    caplog.set_level(logging.INFO)
    child.call(log_an_epoch, tmp_path)
    ours = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("adaptflow")]  # not a log-shipping thread's
    assert ours == [("adaptflow.detection.yolo", logging.INFO, "epoch 1/2: box_loss 1.5")]


def test_records_arrive_in_order_from_another_process_and_the_result_returns(tmp_path: Path) -> None:
    seen: list[dict] = []
    result = child.call(count, tmp_path, on_record=seen.append, n=3)
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert result["total"] == 3 and result["pid"] != os.getpid() and {r["pid"] for r in seen} == {result["pid"]}
    assert list(tmp_path.iterdir()) == [], "the call's files are removed once the result is read"


def test_a_pickled_emitter_reports_from_a_process_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOFF", str(tmp_path / "callbacks.pkl"))
    seen: list[dict] = []
    child.call(hand_to_another_process, tmp_path / "call", on_record=seen.append)
    assert [r["epoch"] for r in seen] == [7] and seen[0]["pid"] != os.getpid()


def test_a_failing_child_raises_its_message_and_leaves_no_result(tmp_path: Path) -> None:
    seen: list[dict] = []
    with pytest.raises(child.ChildProcessError, match="ValueError: batch size 0 is not a batch size"):
        child.call(fail_after_one, tmp_path, on_record=seen.append)
    assert seen == [{"epoch": 1}]
    assert not (tmp_path / "child.result").exists()


def test_an_error_in_the_parent_stops_the_child(tmp_path: Path) -> None:
    def stop(record: dict) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        child.call(run_long, tmp_path, on_record=stop)
    assert time.monotonic() - started < 60, "the child ran on after the parent gave up"
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "child.call")], capture_output=True).stdout == b""


def test_the_network_guard_reaches_child_processes() -> None:
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=5)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode != 0 and "test network guard" in result.stderr
    assert any("192.0.2.1" in line for line in netguard.refused())
    netguard.reset()  # the attempt was this test's own


def test_in_this_process_the_same_call_runs_here_with_the_same_records_and_no_files(tmp_path: Path) -> None:
    """A stage command (no other thread) runs its trainer in its own process: no second Python to start."""
    seen: list[dict] = []
    with child.in_this_process():
        result = child.call(count, tmp_path / "call", on_record=seen.append, n=3)
        with pytest.raises(ValueError, match="batch size 0 is not a batch size"):
            child.call(fail_after_one, tmp_path / "fails")
    assert result == {"total": 3, "pid": os.getpid()} and [r["epoch"] for r in seen] == [1, 2, 3]
    assert not (tmp_path / "call").exists() and not (tmp_path / "fails").exists()
    assert child.call(count, tmp_path / "after", n=1)["pid"] != os.getpid(), "outside the block a child process again"

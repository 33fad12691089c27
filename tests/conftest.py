"""Shared fixtures: an isolated project per test, tiny real data, and a network guard.

Every test runs against real components (Prefect in-process, MLflow on SQLite, DVC in a temp
repo, HTTP on loopback). The guard fails any test that tries to reach beyond 127.0.0.1.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Isolate every tool's home before anything imports them.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"

from adaptflow import env  # noqa: E402

env.apply()

#: Settings that make the real pipeline run in seconds on tiny data.
TINY = [
    "data.image_size=16",
    "pretrain.epochs=1",
    "pretrain.batch_size=32",
    "finetune.epochs=3",
    "finetune.lp_epochs=1",
    "finetune.batch_size=16",
    "evaluate.batch_size=64",
]


def tiny_config(*overrides: str):
    from adaptflow.config import load_config

    return load_config(None, [*TINY, *overrides])


# --- network guard ---------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).parent / "netguard"))
import netguard  # noqa: E402

#: Python processes the tests start load the guard too (tests/netguard/sitecustomize.py).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(netguard.__file__).parent), os.environ.get("PYTHONPATH")]))
_guard_log = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"adaptflow-network-{os.getpid()}.log")
if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker its own log: workers start with the controller's environment
    os.environ[netguard.LOG_VARIABLE] = _guard_log
else:
    os.environ.setdefault(netguard.LOG_VARIABLE, _guard_log)


# --- parallel workers (pytest -n N) ----------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """With N xdist workers, each worker and the processes its tests start get 1/N of the cores as
    torch threads: N workers at full thread count oversubscribe the CPU and run slower than one. The
    count is fixed for the whole run (also with one worker), so that `threads: auto` takes it as given
    instead of following the machine's load: float results depend on the thread count, and tests
    compare runs made in different processes (a flow and `dvc repro`)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "OMP_NUM_THREADS" not in os.environ or workers > 1:
        import torch

        threads = max(1, env.usable_cpus() // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `heavy` the tests tests/heavy.py lists (`make test-quick` leaves them out); a listed name its
    file no longer defines stops the run."""
    from heavy import HEAVY

    modules = {}
    for item in items:
        path = Path(item.path).relative_to(REPO).as_posix()
        if getattr(item, "originalname", None) in HEAVY.get(path, ()):
            item.add_marker(pytest.mark.heavy)
        if getattr(item, "module", None) is not None:
            modules[path] = item.module
    stale = [f"{path}::{name}" for path, module in modules.items() for name in HEAVY.get(path, ()) if not hasattr(module, name)]
    if stale:
        raise pytest.UsageError(f"tests/heavy.py lists tests that do not exist: {', '.join(stale)}; rename or drop them there")


@pytest.fixture(autouse=True)
def network_guard():
    """Fail the test if anything, in this process or a child, tried to connect outside loopback,
    even if the error was swallowed."""
    netguard.reset()
    netguard.install()
    yield
    netguard.uninstall()
    assert not netguard.refused(), f"network access outside 127.0.0.1 attempted: {netguard.refused()}"


# --- loopback HTTP ------------------------------------------------------------------------------


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that answers with whole bodies and keeps the test output clean."""

    def send_body(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve_on_loopback(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (a free port), serving in the background."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


# --- projects ----------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def init_dvc_repo(root: Path) -> None:
    """A git + DVC repository with a local remote, as a fresh clone of the project has."""
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", "remote"], root)  # relative: copies push to their own


@pytest.fixture(scope="session")
def template_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with tiny real data (MNIST -> UCI digits, a few images per class) versioned by DVC,
    and a source model published at models/source; built once per session."""
    from adaptflow.data.demo import build_demo_data

    from adaptflow.pretrain import pretrain

    root = tmp_path_factory.mktemp("template")
    init_dvc_repo(root)
    build_demo_data(root / "data", source_test_per_class=6, target_test_per_class=6, labeled_per_class=4, limit_per_class=16)
    run([sys.executable, "-m", "dvc", "add", "-q", "data"], root)
    cfg = tiny_config()
    previous = os.environ.get("ADAPTFLOW_ROOT")
    os.environ["ADAPTFLOW_ROOT"] = str(root)
    try:
        pretrain(cfg.pretrain, cfg.data, root / "work")  # publishes models/source, as the pretrain step does
    finally:
        os.environ.pop("ADAPTFLOW_ROOT") if previous is None else os.environ.update(ADAPTFLOW_ROOT=previous)
    return root


@pytest.fixture
def project(template_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the template project, made the current project (ADAPTFLOW_ROOT)."""
    root = tmp_path / "project"
    shutil.copytree(template_project, root, symlinks=True)
    return use_project(root, tmp_path / "cache", monkeypatch)


def use_project(root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make `root` the current project (ADAPTFLOW_ROOT, the working directory), with caches under `cache`."""
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("ADAPTFLOW_ROOT", str(root))
    monkeypatch.setenv("ADAPTFLOW_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect API for the session (a temporary local server, offline)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# --- simulated crashes ---------------------------------------------------------------------------


class Crash(RuntimeError):
    """What `crash_at` raises: a process dying mid-training, seen from the training loop."""


def crash_at(epoch: int):  # noqa: ANN201 - an epoch callback
    """An epoch callback that crashes once `epoch` has finished (and been checkpointed)."""

    def on_epoch(finished: int, record: dict) -> None:
        if finished == epoch:
            raise Crash

    return on_epoch


# --- reliability counters ------------------------------------------------------------------------

#: name -> [tried, handled]; reliability tests count what they inject and what was survived.
TALLY: dict[str, list[int]] = {"faults": [0, 0], "bad inputs": [0, 0]}


class Tally:
    """`with tally.attempt():` counts one try; it counts as handled only if the block finishes."""

    def __init__(self, name: str) -> None:
        self.counts = TALLY[name]

    def attempt(self):
        import contextlib

        @contextlib.contextmanager
        def counting():
            self.counts[0] += 1
            yield
            self.counts[1] += 1

        return counting()


@pytest.fixture
def faults() -> Tally:
    return Tally("faults")


@pytest.fixture
def bad_inputs() -> Tally:
    return Tally("bad inputs")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # an xdist worker: its counts go to the controller
        session.config.workeroutput["tally"] = TALLY


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist's worker node
    """The controller adds up what each worker counted."""
    for name, (tried, handled) in node.workeroutput.get("tally", {}).items():
        TALLY[name][0] += tried
        TALLY[name][1] += handled


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    faults, bad = TALLY["faults"], TALLY["bad inputs"]
    if faults[0]:
        terminalreporter.write_line(f"faults injected: {faults[0]}, survived: {faults[1]}")
    if bad[0]:
        terminalreporter.write_line(f"bad inputs tried: {bad[0]}, rejected cleanly: {bad[1]}")

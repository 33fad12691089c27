"""The one place that decides where local state lives and that keeps every tool offline.

Each tool in the stack reaches for the network on its own (telemetry, update checks, font
downloads). `apply()` switches all of that off through environment variables, before the
tools are imported. It only sets what the user has not set, so a shared stack (a Prefect
server, an MLflow server, S3) is chosen by exporting its variables as usual.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

#: Variables that stop telemetry and update checks. Values are the "off" settings.
OFFLINE_DEFAULTS: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "YOLO_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # transformers and the Hugging Face hub client: local files only (the text encoder ships in a package).
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # The ephemeral Prefect API needs more than the default 20 s on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}

#: The loggers whose lines a flow run's log (the Prefect UI's Logs tab) shows beside Prefect's own:
#: adaptflow's (images validated, epochs, metrics, the registry gate's decision). Prefect reads it when
#: it is imported, so a worker's environment must hold it too (the image and the local stack set it).
PREFECT_EXTRA_LOGGERS_VAR = "PREFECT_LOGGING_EXTRA_LOGGERS"
LOGGER = "adaptflow"

#: Variables that keep the tools' output fit for log files: MLflow otherwise draws a progress bar
#: for every artifact it copies, into Prefect's logs and the demo's output too. adaptflow's lines go
#: to the flow run's log; outside a flow run (the CLI's own commands) to the console only, without a
#: warning from Prefect.
LOG_DEFAULTS: dict[str, str] = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", PREFECT_EXTRA_LOGGERS_VAR: LOGGER,
                                "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}

#: The environment of the MLflow servers adaptflow starts (`adaptflow ui`, the local stack, the tests'):
#: MLflow 3 otherwise starts a job runner with seven huey consumers (about 2 GB, and a folder in /dev/shm
#: that it never removes) for GenAI jobs adaptflow does not use. `infra/compose.yaml` sets the same.
MLFLOW_SERVER_DEFAULTS: dict[str, str] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


#: Set to 1 by the operator of a machine (in a worker's environment) to let runs on it load pickled
#: model files. Unpickling runs code: a config value, which whoever starts a flow run chooses, cannot.
ALLOW_PICKLE_VAR = "ADAPTFLOW_ALLOW_PICKLE"


def pickle_refused(requested: bool) -> str | None:
    """Why `pretrained.allow_pickle=true` does not take effect on this machine, or None."""
    if requested and os.environ.get(ALLOW_PICKLE_VAR) != "1":
        return (f"pretrained.allow_pickle=true is refused here: loading pickled weights runs code, so only the operator can "
                f"allow it, by setting {ALLOW_PICKLE_VAR}=1 in the environment of the worker or shell that runs the pipeline")
    return None


def inside_project(path: str | Path, field: str) -> Path:
    """`path` (relative to the project folder) resolved, if it stays inside the project folder or its cache
    (`cache_dir()`, where the benchmark keeps its models); otherwise a ValueError naming `field`: a run
    writes only into its own project."""
    root = project_root()
    resolved = project_path(path).resolve()
    if not (resolved.is_relative_to(root) or resolved.is_relative_to(cache_dir().resolve())):
        raise ValueError(f"{field}={path} resolves to {resolved}, outside the project folder {root}; "
                         f"give a folder inside it, e.g. {field}=models/source")
    return resolved


def project_root() -> Path:
    """The project folder: `$ADAPTFLOW_ROOT`, else the current directory."""
    return Path(os.environ.get("ADAPTFLOW_ROOT") or Path.cwd()).resolve()


def project_path(path: str | Path) -> Path:
    """A relative `path` taken from the project folder; an absolute one as it is."""
    return project_root() / path


def cache_dir() -> Path:
    """Content-addressed cache for downloads and decoded datasets."""
    return Path(os.environ.get("ADAPTFLOW_CACHE") or project_root() / ".cache").resolve()


def default_tracking_uri() -> str:
    """MLflow's store when none is configured: SQLite inside the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store (`sqlite:///<path>`), or None for any other store."""
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


def store_not_made(uri: str) -> Path | None:
    """The file of a SQLite store that does not exist yet: nothing was ever tracked there, and a
    lookup should say so rather than create it."""
    path = sqlite_file(uri)
    return path if path is not None and not path.exists() else None


def default_artifact_location() -> str:
    """Where local runs keep their artifacts when the store does not say."""
    return (project_root() / "mlartifacts").as_uri()


def apply() -> None:
    """Set the offline defaults and local homes for every tool; values the user set win."""
    for key, value in {**OFFLINE_DEFAULTS, **LOG_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    extra = [name.strip() for name in os.environ.get(PREFECT_EXTRA_LOGGERS_VAR, "").split(",") if name.strip()]
    if LOGGER not in extra:  # the user's own extra loggers stay
        os.environ[PREFECT_EXTRA_LOGGERS_VAR] = ",".join([*extra, LOGGER])
    root = project_root()
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("TORCH_HOME", str(cache_dir() / "torch"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    os.environ.setdefault("MPLBACKEND", "Agg")


# --- CPU budget ---------------------------------------------------------------------------------
#
# torch starts as many threads as the host has cores. In a container limited by a CPU quota, on a
# process pinned to some cores (taskset, a Kubernetes static CPU policy), or beside other busy
# processes, those threads outnumber the cores the process really gets, and every OpenMP barrier
# then waits for a thread that is not running: on 2 shared cores one epoch took 3-8x longer with
# 2 threads than with 1 (`make bench`, contention case). A passive OpenMP wait policy recovered
# only part of that, so the budget lowers the thread count instead.

#: Environment variables that carry the thread budget to child processes (torchrun workers, the
#: YOLO trainer's process, DVC stages started by a flow): OpenMP and MKL read them when they load.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The budget `apply_threads` chose last in this process, for the run's record, and the setting it was for.
_applied: int | None = None
_applied_for: int | str | None = None
#: $OMP_NUM_THREADS as it was before `apply_threads` first set it (what this process was given).
_given: str | None = None


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None without one.

    Reads cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`), in the process's own
    cgroup and in every ancestor up to the mount point (the tightest wins); the files are read from
    `cgroup_root`, so that a test can give fake ones."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits: list[float] = []
    for line in lines or ["0::/"]:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            bases = [cgroup_root, cgroup_root / "unified"]
            reader = _v2_limit
        elif "cpu" in controllers.split(","):
            bases = [cgroup_root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            reader = _v1_limit
        else:
            continue
        for base in bases:
            if base.is_dir():
                limits += _limits_along(base, path, reader)
    return min(limits) if limits else None


def _limits_along(base: Path, path: str, reader) -> list[float]:  # noqa: ANN001 - one of the two readers below
    """Quotas of the cgroup at `path` under `base` and of its ancestors (a container sees its own
    cgroup at the mount point: then only the files there count)."""
    parts = [p for p in path.split("/") if p]
    folders = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [limit for folder in folders if folder.is_dir() and (limit := reader(folder)) is not None]


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may really use: those of its affinity mask (taskset, cpusets), capped by
    its cgroup's CPU quota (rounded down: a quota of 1.5 CPUs runs 1 thread unthrottled); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, int(limit))
    return max(1, cpus)


_STAT = Path("/proc/stat")


def _sample(stat: Path) -> tuple[float, float, float] | None:
    """(CPU seconds all processes have spent busy since boot, this process's CPU seconds, perf_counter) now;
    None where the Linux /proc/stat cannot be read."""
    try:
        values = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, time.process_time(), time.perf_counter()


#: The sample `busy_cores_elsewhere` took last in this process (the first at this module's import).
_last_sample = _sample(_STAT)


def busy_cores_elsewhere(window_s: float = 0.1, stat: Path = _STAT, max_age_s: float = 5.0) -> float:
    """Cores that other processes kept busy lately (Linux /proc/stat, minus this process's own CPU time);
    0.0 where that cannot be read. The window runs from this process's previous sample (taken when this
    module was imported) when that is at least `window_s` and at most `max_age_s` old, so that a stage
    starting up does not wait; otherwise from a fresh sample, `window_s` seconds long."""
    global _last_sample
    now = _sample(stat)
    if now is None:
        return 0.0
    before = _last_sample if stat == _STAT and _last_sample is not None and window_s <= now[2] - _last_sample[2] <= max_age_s else None
    if before is None:
        time.sleep(window_s)
        before, now = now, _sample(stat)
        if now is None:
            return 0.0
    if stat == _STAT:
        _last_sample = now
    busy, own, elapsed = now[0] - before[0], now[1] - before[1], now[2] - before[2]
    return max(0.0, (busy - own) / elapsed)


def resolve_threads(setting: int | str = "auto", *, cgroup_root: Path = Path("/sys/fs/cgroup"),
                    proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The thread count `threads: <setting>` means here. A number is taken as it is. `auto`: the
    count this process was given ($OMP_NUM_THREADS, set by a parent's budget, a test runner or the user),
    else the CPUs it may use (`usable_cpus`) less those other processes keep busy right now, at least 1."""
    if setting != "auto":
        return int(setting)
    given = os.environ.get("OMP_NUM_THREADS") or ""
    if _applied is not None and given == str(_applied):  # this process's own earlier budget: what it was given before
        given = _given or ""
    if given.isdigit() and int(given) > 0:
        return int(given)
    cpus = usable_cpus(cgroup_root, proc_cgroup)
    if cpus == 1:
        return 1
    return max(1, cpus - round(busy_cores_elsewhere()))


def apply_threads(setting: int | str = "auto") -> int:
    """Give this process and the processes it starts the thread budget of `threads: <setting>`:
    torch's intra-op threads (when torch is loaded) and $OMP_NUM_THREADS / $MKL_NUM_THREADS for
    children. Returns the count."""
    global _applied, _applied_for, _given
    if _applied is None:
        _given = os.environ.get("OMP_NUM_THREADS")
    n = resolve_threads(setting)
    for key in THREAD_VARS:
        os.environ[key] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _applied, _applied_for = n, setting
    return n


def threads_for(setting: int | str = "auto") -> int:
    """The thread budget of `threads: <setting>` in this process: the one already applied for that
    setting (a stage applies it when it starts; its run record must say that count, not sample the
    machine's busy cores again), else applied now."""
    return _applied if _applied is not None and _applied_for == setting else apply_threads(setting)


def threads_in_use() -> int | None:
    """The count `apply_threads` set last in this process (None before it ran)."""
    return _applied

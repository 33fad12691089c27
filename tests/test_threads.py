"""The thread budget: the CPUs a process may really use (affinity mask, cgroup quota), the `threads`
setting, and its passage to child processes and onto the MLflow run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptflow import env

REPO = Path(__file__).resolve().parents[1]


def _cgroup_v2(root: Path, cpu_max: str, path: str = "/pod/app") -> Path:
    """A fake cgroup v2 tree with `cpu.max` in the process's cgroup; returns the /proc/self/cgroup stand-in."""
    folder = root.joinpath(*path.strip("/").split("/"))
    folder.mkdir(parents=True)
    (folder / "cpu.max").write_text(f"{cpu_max}\n")
    (root / "cpu.max").write_text("max 100000\n")
    proc = root.parent / "self-cgroup"
    proc.write_text(f"0::{path}\n")
    return proc


def test_a_cgroup_v2_quota_of_one_cpu_gives_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    proc = _cgroup_v2(root, "100000 100000")
    assert env.cgroup_cpu_limit(root, proc) == 1.0
    assert env.usable_cpus(root, proc) == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert env.resolve_threads("auto", cgroup_root=root, proc_cgroup=proc) == 1


def test_cgroup_quotas_round_down_take_the_tightest_ancestor_and_ignore_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "v2"
    proc = _cgroup_v2(root, "max 100000")
    assert env.cgroup_cpu_limit(root, proc) is None
    (root / "pod" / "cpu.max").write_text("250000 100000\n")  # the parent's limit binds the child
    assert env.cgroup_cpu_limit(root, proc) == 2.5
    (root / "pod" / "app" / "cpu.max").write_text("150000 100000\n")
    assert env.cgroup_cpu_limit(root, proc) == 1.5
    assert env.usable_cpus(root, proc) == 1  # 1.5 CPUs run one thread unthrottled


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("50000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert env.cgroup_cpu_limit(root, proc) == 0.5
    assert env.usable_cpus(root, proc) == 1  # at least one
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert env.cgroup_cpu_limit(root, proc) is None


def test_a_number_is_taken_as_it_is_and_a_given_omp_num_threads_wins_over_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert env.resolve_threads("auto") == 5


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset and 2 CPUs")
def test_a_process_pinned_to_one_cpu_runs_one_thread_and_passes_it_on() -> None:
    """`taskset -c 0`: auto gives one torch thread, and the process's children (torchrun workers, the
    YOLO trainer) inherit the budget through $OMP_NUM_THREADS."""
    script = ("import subprocess, sys, torch\n"
              "from adaptflow import env\n"
              "n = env.apply_threads('auto')\n"
              "child = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],"
              " capture_output=True, text=True, check=True).stdout.strip()\n"
              "print(n, torch.get_num_threads(), child)\n")
    clean = {k: v for k, v in os.environ.items() if k not in env.THREAD_VARS}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", script], capture_output=True, text=True, env=clean,
                         cwd=REPO, check=True).stdout.split()
    assert out == ["1", "1", "1"]


def test_an_unpinned_process_gives_its_children_its_own_count() -> None:
    script = ("import subprocess, sys\n"
              "from adaptflow import env\n"
              "n = env.apply_threads(1)\n"
              "print(subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],"
              " capture_output=True, text=True, check=True).stdout.strip())\n")
    clean = {k: v for k, v in os.environ.items() if k not in env.THREAD_VARS}
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean, cwd=REPO,
                          check=True).stdout.split() == ["1"]


def test_the_setting_and_the_count_it_came_to_are_params_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from adaptflow import tracking
    from adaptflow.config import load_config
    from adaptflow.pipeline import run_params

    monkeypatch.setenv("ADAPTFLOW_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in env.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    import torch

    before = torch.get_num_threads()
    try:
        cfg = load_config(None, ["threads=1"])
        run_id = tracking.start_run(cfg.tracking, "threads", {}, run_params(cfg))
        params = MlflowClient(env.default_tracking_uri()).get_run(run_id).data.params
        assert (params["threads"], params["threads_used"]) == ("1", "1")
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        auto = load_config(None, [])
        run_id = tracking.start_run(auto.tracking, "auto", {}, run_params(auto))
        params = MlflowClient(env.default_tracking_uri()).get_run(run_id).data.params
        assert params["threads"] == "auto"
        assert 1 <= int(params["threads_used"]) <= len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_bad_threads_name_the_field_and_the_fix() -> None:
    from adaptflow.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"threads: .*auto or a whole number from 1 to 1024, e.g. threads=auto \(got 0\)"):
        load_config(None, ["threads=0"])


def test_auto_follows_a_given_count_also_after_setting_the_same_count_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process given $OMP_NUM_THREADS keeps it through repeated stages; one that was not re-decides
    at each stage rather than taking its own earlier budget as given."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(env, "_applied", None)
    monkeypatch.setattr(env, "_given", None)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert [env.apply_threads("auto") for _ in range(3)] == [3, 3, 3]
        monkeypatch.setattr(env, "_applied", None)
        monkeypatch.delenv("OMP_NUM_THREADS")
        cpus = len(os.sched_getaffinity(0))
        env.apply_threads(cpus + 5)  # a number, set by this process: not a count it was given
        assert os.environ["OMP_NUM_THREADS"] == str(cpus + 5)
        assert 1 <= env.resolve_threads("auto") <= cpus
    finally:
        torch.set_num_threads(before)


def test_a_run_records_the_budget_its_stage_applied_though_the_machine_got_busier(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` is decided once, when a stage starts: the run's params say that count, not a second look at the load."""
    import torch

    from adaptflow.config import load_config
    from adaptflow.pipeline import run_params

    for name, value in (("_applied", None), ("_applied_for", None), ("_given", None)):
        monkeypatch.setattr(env, name, value)
    for var in env.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(env, "usable_cpus", lambda *args: 4)
    load = iter([0.0, 3.0])  # idle when the stage starts, three cores busy elsewhere by the time the run is recorded
    monkeypatch.setattr(env, "busy_cores_elsewhere", lambda: next(load))
    before = torch.get_num_threads()
    try:
        cfg = load_config(None, [])
        assert cfg.threads == "auto"
        assert env.apply_threads(cfg.threads) == 4
        assert run_params(cfg)["threads_used"] == 4 and torch.get_num_threads() == 4
        assert env.threads_for(2) == 2 and torch.get_num_threads() == 2  # another setting is applied anew
        assert env.threads_for("auto") == 1  # and auto after it is decided again, on the load now
    finally:
        torch.set_num_threads(before)


def test_the_busy_core_sample_reuses_a_recent_one_instead_of_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage starting up measures the machine's load since this module's import (a window it spent
    importing anyway), not over a fresh 0.1 s wait; a sample too old or too recent means a fresh window."""
    import time

    slept: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (slept.append(s), real_sleep(s)))
    env.busy_cores_elsewhere()  # whatever came before: now there is a sample
    real_sleep(0.15)
    slept.clear()
    assert env.busy_cores_elsewhere(window_s=0.1) >= 0.0 and slept == []  # 0.15 s old: reused
    assert env.busy_cores_elsewhere(window_s=0.1) >= 0.0 and slept == [0.1]  # just taken: too short a window
    real_sleep(0.15)
    slept.clear()
    env.busy_cores_elsewhere(window_s=0.1, max_age_s=0.1)
    assert slept == [0.1]  # 0.15 s old but older than max_age_s: a fresh window

"""The command line: config errors are one clear line, overrides reach the config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=REPO, capture_output=True, text=True)


def test_config_show_applies_overrides() -> None:
    out = _cli("config", "finetune.epochs=3", "finetune.strategy=finetune")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["finetune"]["epochs"] == 3 and cfg["finetune"]["strategy"] == "finetune"


def test_wrong_key_exits_2_naming_the_field() -> None:
    out = _cli("config", "finetune.epoch=3")
    assert out.returncode == 2
    assert "finetune.epoch: unknown field (did you mean 'epochs'?)" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_check_across_fields_names_them_and_not_the_whole_section() -> None:
    out = _cli("config", "finetune.strategy=lp_ft", "finetune.epochs=3", "finetune.lp_epochs=5")
    assert out.returncode == 2
    assert out.stderr == ("error: params.yaml + overrides: invalid configuration\n"
                          "  finetune: lp_ft needs 0 < lp_epochs < epochs (got lp_epochs=5, epochs=3); "
                          "lower finetune.lp_epochs or raise finetune.epochs\n")


def test_help_and_config_start_without_torch_or_mlflow() -> None:
    probe = ("import sys\nfrom adaptflow.cli import main\nsys.argv = ['adaptflow', *sys.argv[1:]]\ntry:\n    main()\n"
             "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
             "print('loaded:', sorted(m for m in ('torch', 'mlflow', 'prefect', 'dvc') if m in sys.modules), file=sys.stderr)")
    for args in (["--help"], ["finetune", "--help"], ["config", "finetune.seed=3"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "loaded: []" in out.stderr, (args, out.stderr[-500:])


def test_help_keeps_the_bracketed_text_it_shows() -> None:
    """Help text is rich markup: an unescaped `[ray]` vanishes from the install command it names."""
    for command, shown in (("benchmark", "pip install 'adaptflow[ray]'"), ("sweep", "pip install 'adaptflow[ray]'"),
                           ("fetch", "torchvision:ARCH[:WEIGHTS], ultralytics:ASSET.pt")):
        out = subprocess.run([sys.executable, "-m", "adaptflow", command, "--help"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "250"})
        assert out.returncode == 0, out.stderr
        assert shown in out.stdout, out.stdout


def test_stages_on_an_unfinished_run_folder_name_the_stage_to_run_first(tmp_path: Path) -> None:
    out = _cli("evaluate", "--run-dir", str(tmp_path))
    assert (out.returncode, out.stderr) == (2, f"error: {tmp_path}: no run.json in this run folder; run the finetune stage "
                                               f"into it first: adaptflow finetune --run-dir {tmp_path}\n")
    (tmp_path / "finetune").mkdir()
    (tmp_path / "finetune" / "model.pt").write_bytes(b"")
    (tmp_path / "run.json").write_text("{}")
    out = _cli("register", "--run-dir", str(tmp_path))
    assert out.returncode == 2 and "no evaluate/metrics.json in this run folder; run the evaluate stage" in out.stderr, out.stderr

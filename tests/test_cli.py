"""The command line: config errors are one clear line, overrides reach the config."""

from __future__ import annotations

import subprocess
import sys

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

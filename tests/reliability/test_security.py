"""Findings of the security review (#38): each attack, tried for real, is refused with one line
naming the file or field and the fix, and leaves no trace of having run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import REPO


def _cli(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **env}, timeout=600)


def _one_line_refusal(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error, out.stderr[-3000:]
    for fragment in fragments:
        assert fragment in out.stderr, f"'{fragment}' not in:\n{out.stderr[-3000:]}"


# --- domain names stay under data.root ------------------------------------------------------------


def test_data_add_to_a_domain_named_with_dot_dot_writes_nothing_outside_data_root(tmp_path: Path, bad_inputs) -> None:
    with bad_inputs.attempt():
        (tmp_path / "inbox" / "0").mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "inbox" / "0" / "new.png")
        out = _cli("data", "add", str(tmp_path / "inbox"), f"data.root={tmp_path / 'data'}", "data.target=../escape")
        _one_line_refusal(out, "data.target", "'../escape' is not a plain folder name", "name a folder directly under data.root")
        assert not (tmp_path / "escape").exists() and not (tmp_path / "data").exists()

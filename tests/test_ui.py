"""`adaptflow ui` on ports of one's choosing: the Prefect UI it serves calls its API on that same port,
even with PREFECT_API_URL exported for another server (the UI would otherwise show only an error)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_server import _free_port, _healthy, _wait

pytestmark = pytest.mark.server


def test_the_served_ui_calls_the_api_on_the_chosen_port(tmp_path: Path) -> None:
    prefect_port, mlflow_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "ADAPTFLOW_ROOT": str(tmp_path),
            "PREFECT_API_URL": "http://127.0.0.1:4200/api"}  # exported earlier, for another server
    ui = subprocess.Popen([sys.executable, "-m", "adaptflow", "ui", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
                          cwd=tmp_path, env=env, stdout=(tmp_path / "ui.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{prefect_port}"
    try:
        _wait(lambda: _healthy(f"{base}/api"), 180, "the Prefect server of adaptflow ui")
        settings = httpx.get(f"{base}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"{base}/api", settings
        assert "<html" in httpx.get(base, timeout=10, follow_redirects=True).text.lower()
    finally:
        ui.send_signal(signal.SIGTERM)  # adaptflow ui stops its servers on SIGTERM
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        if ui.returncode not in (0, 130, 143):  # not what a stop by signal leaves
            pytest.fail((tmp_path / "ui.log").read_text()[-3000:])
    assert not _healthy(f"{base}/api"), "adaptflow ui left its Prefect server running"

"""The command line: config errors are one clear line, overrides reach the config, each kind of failure
has its exit status (docs/cli.md)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import REPO, TINY


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=REPO, capture_output=True, text=True)


def test_config_show_applies_overrides() -> None:
    out = _cli("config", "finetune.epochs=3", "finetune.strategy=finetune")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["finetune"]["epochs"] == 3 and cfg["finetune"]["strategy"] == "finetune"


def test_wrong_key_exits_3_naming_the_field() -> None:
    out = _cli("config", "finetune.epoch=3")
    assert out.returncode == 3
    assert "finetune.epoch: unknown field (did you mean 'epochs'?)" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_override_that_is_not_yaml_exits_3_naming_it() -> None:
    out = _cli("config", "finetune.methods=[coral")
    assert (out.returncode, out.stderr) == (3, "error: override 'finetune.methods=[coral': not valid YAML (line 1, column 7): expected "
                                               "',' or ']', but got '<stream end>'; fix it, or quote a value meant as text\n")


def test_a_check_across_fields_names_them_and_not_the_whole_section() -> None:
    out = _cli("config", "finetune.strategy=lp_ft", "finetune.epochs=3", "finetune.lp_epochs=5")
    assert out.returncode == 3
    assert out.stderr == ("error: params.yaml + overrides: invalid configuration\n"
                          "  finetune: lp_ft needs 0 < lp_epochs < epochs (got lp_epochs=5, epochs=3); "
                          "lower finetune.lp_epochs or raise finetune.epochs\n")


def test_data_add_takes_only_a_split_the_pipeline_reads(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "inbox" / "0").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "inbox" / "0" / "new.png")
    out = subprocess.run([sys.executable, "-m", "adaptflow", "data", "add", str(tmp_path / "inbox"), "--split", "tran", f"data.root={tmp_path / 'data'}"],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 2 and "'tran' is not one of 'train', 'val', 'test', 'unlabeled'" in out.stderr
    assert not (tmp_path / "data").exists()


def test_a_prefect_server_that_does_not_answer_stops_a_command_before_any_work(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"  # closed once the block ends: nothing answers there
    from PIL import Image

    (tmp_path / "inbox" / "0").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "inbox" / "0" / "new.png")
    profiles = tmp_path / "profiles.toml"  # the URL from the active Prefect profile, not the environment
    profiles.write_text(f'active = "stack"\n\n[profiles.stack]\nPREFECT_API_URL = "{url}"\n')
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_PROFILES_PATH": str(profiles), "COLUMNS": "250"}
    refused = f"error: no Prefect server answers at PREFECT_API_URL={url} ([Errno 111] Connection refused); start it"
    for args, outcome in ((["run", "pretrain", f"pretrain.output={tmp_path / 'model'}"], "temporary local server\n"),
                          (["data", "add", str(tmp_path / "inbox"), f"data.root={tmp_path / 'data'}"], "; nothing was added\n"),
                          (["serve"], "temporary local server\n")):
        out = subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 4 and out.stderr.startswith(refused) and out.stderr.endswith(outcome), (args, out.stderr[-800:])
    assert not (tmp_path / "data").exists() and not (tmp_path / "model").exists()


def test_an_mlflow_server_that_does_not_answer_stops_a_command_before_any_work(tmp_path: Path) -> None:
    import http.server
    import threading

    from adaptflow.config import TrackingConfig
    from adaptflow.tracking.store import server_problem

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed once the block ends: nothing answers there
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"MLFLOW_TRACKING_URI": url, "COLUMNS": "250"}
    refused = f"no MLflow server answers at {url} ([Errno 111] Connection refused); start it (`make ui`, or `make stack`)"
    for args, shown in ((["registry", "list"], f"error: {refused}"), (["run", "pretrain", f"pretrain.output={tmp_path / 'model'}"], f"error: {refused}"),
                        (["validate"], f"  - tracking.uri: {refused}")):  # what the flows' first task runs
        out = subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        # validate lists every problem: where the data is missing too (a fresh clone), that is invalid input first
        expected = 4 if args != ["validate"] or "1 problem(s)" in out.stderr else 3
        assert out.returncode == expected and shown in out.stderr and "Traceback" not in out.stderr, (args, out.stderr[-800:])
    assert not (tmp_path / "model").exists()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to everything
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server_problem(TrackingConfig(uri=f"http://127.0.0.1:{server.server_port}")) is None, "a server that answers is left to MLflow"
    finally:
        server.shutdown()
        server.server_close()
    assert server_problem(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")) is None


def test_help_and_config_start_without_torch_or_mlflow() -> None:
    probe = ("import sys\nfrom adaptflow.app.cli import main\nsys.argv = ['adaptflow', *sys.argv[1:]]\ntry:\n    main()\n"
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
    assert (out.returncode, out.stderr) == (3, f"error: {tmp_path}: no run.json in this run folder; run the finetune stage "
                                               f"into it first: adaptflow finetune --run-dir {tmp_path}\n")
    (tmp_path / "finetune").mkdir()
    (tmp_path / "finetune" / "model.pt").write_bytes(b"")
    (tmp_path / "run.json").write_text("{}")
    out = _cli("register", "--run-dir", str(tmp_path))
    assert out.returncode == 3 and "no evaluate/metrics.json in this run folder; run the evaluate stage" in out.stderr, out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_ui_serves_both_stores_in_a_few_processes_and_stops_them_all(tmp_path: Path) -> None:
    """`adaptflow ui` on an empty project: both UIs answer on the project's stores; MLflow runs one
    worker and no job runner (by default MLflow 3 adds four workers and eight job processes, about 4 GB);
    a SIGTERM stops every process it started."""
    from adaptflow.app.stack import process_tree

    prefect_port, mlflow_port = _free_port(), _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))} | {"ADAPTFLOW_ROOT": str(tmp_path)}
    with open(tmp_path / "ui.log", "wb") as out:
        ui = subprocess.Popen([sys.executable, "-m", "adaptflow", "ui", "--prefect-port", str(prefect_port), "--mlflow-port",
                               str(mlflow_port)], cwd=tmp_path, env=environ, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (_answers(f"http://127.0.0.1:{prefect_port}/api/health") and _answers(f"http://127.0.0.1:{mlflow_port}/health")):
            assert ui.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(1)
        tree = process_tree(ui.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in tree]
        assert not [c for c in commands if "huey" in c or "_job_runner" in c or "multiprocessing" in c], commands
        assert len(tree) <= 5, commands  # adaptflow ui, the Prefect server, mlflow ui and its one uvicorn process
        assert (tmp_path / ".prefect" / "prefect.db").exists() and (tmp_path / "mlflow.db").exists()
    finally:
        ui.terminate()
        returncode = ui.wait(timeout=60)
    assert returncode == 0, (tmp_path / "ui.log").read_text()[-3000:]
    assert not [pid for pid in tree if Path(f"/proc/{pid}").exists() and pid != ui.pid]
    assert not _answers(f"http://127.0.0.1:{prefect_port}/api/health") and not _answers(f"http://127.0.0.1:{mlflow_port}/health")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_sigterm_during_a_run_stops_it_and_the_temporary_prefect_server_it_started(project: Path) -> None:
    """A stopped `adaptflow run` (SIGTERM: a scheduler, `kill`, a closed terminal's job control) leaves no
    process behind: Prefect's temporary API server used to keep running, orphaned, after every one."""
    from adaptflow.app.stack import process_tree

    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"ADAPTFLOW_ROOT": str(project)}
    log = project / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "adaptflow", "run", "pretrain", *TINY, "pretrain.epochs=1000",
                                "pretrain.output=models/long"], cwd=project, env=environ, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "decoded" not in log.read_text(errors="replace"):  # training has begun
            assert run.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        tree = process_tree(run.pid)
        assert len(tree) > 1, "the temporary Prefect server runs beside the flow"
        run.terminate()
        returncode = run.wait(timeout=120)
        time.sleep(2)
        left = [pid for pid in tree if _running(pid)]
    finally:
        for pid in process_tree(run.pid):  # whatever a failure left, so that it ends with the test
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert returncode == 128 + 15 and not left, (returncode, left, log.read_text(errors="replace")[-3000:])
    assert "Crash detected! Execution was aborted by a termination signal" in log.read_text(errors="replace")
    assert not (project / "models" / "long").exists()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]  # the pretrain's MLflow run, not RUNNING for ever


# --- exit status: one per kind of failure, each tried on a real case --------------------------------------------


def test_each_exit_status_is_documented_in_the_help_and_in_docs() -> None:
    from adaptflow.errors import EXIT_CODES, ExitCode

    assert [int(code) for code in EXIT_CODES] == list(range(7)) and set(EXIT_CODES) == set(ExitCode)
    table = (REPO / "docs" / "cli.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"| {int(code)} | {meaning} |" in table, f"docs/cli.md: no row for exit status {int(code)}: | {int(code)} | {meaning} |"
    shown = _cli("--help")
    assert shown.returncode == 0, shown.stderr
    help_text = " ".join(shown.stdout.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{int(code)} {meaning.split(':')[0]}" in help_text, help_text[-1500:]


def test_version_names_adaptflow_and_the_engines() -> None:
    from importlib.metadata import version

    out = _cli("--version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"adaptflow {version('adaptflow')}"
    for name in ("torch", "prefect", "mlflow", "dvc"):
        assert f"{name} {version(name)}" in lines


def test_a_command_line_that_cannot_work_exits_2_listing_the_choices() -> None:
    out = subprocess.run([sys.executable, "-m", "adaptflow", "run", "pretrian"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 2 and "'pretrian' is not one of 'pretrain', 'transfer', 'retrain'" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "adaptflow", "sweep"], cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 2 and "give the values to try, e.g. --grid finetune.lr=1e-3,3e-3" in out.stderr, out.stderr


def test_a_data_folder_that_cannot_be_used_exits_3_naming_it(tmp_path: Path) -> None:
    (tmp_path / "mnist" / "train").mkdir(parents=True)
    out = _cli("validate", "--data-only", f"data.root={tmp_path}")
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"{tmp_path / 'mnist' / 'train'}: no class folders" in out.stderr, out.stderr[-2000:]


def test_weights_whose_sha256_does_not_match_exit_5(tmp_path: Path) -> None:
    from conftest import QuietHandler, serve_on_loopback

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not the published weights")
    wrong = "0" * 64
    out = _cli("fetch", str(weights), "--sha256", wrong)
    assert out.returncode == 5, out.stderr
    assert out.stderr.startswith(f"error: {weights}: sha256 is ") and f"expected {wrong}" in out.stderr and "Traceback" not in out.stderr

    class Weights(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_body(b"tampered on the way")

    httpd = serve_on_loopback(Weights)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/w.pt"
        out = subprocess.run([sys.executable, "-m", "adaptflow", "fetch", url, "--sha256", wrong], cwd=tmp_path, capture_output=True,
                             text=True, env={**os.environ, "ADAPTFLOW_ROOT": str(tmp_path), "ADAPTFLOW_CACHE": str(tmp_path / "cache")},
                             timeout=300)
    finally:
        httpd.shutdown()
    assert out.returncode == 5 and "download failed after 4 attempts: sha256 mismatch" in out.stderr, out.stderr[-2000:]
    assert not list((tmp_path / "cache").rglob("w.pt")), "a file that failed its check is not kept"


def test_a_run_that_fails_exits_6_with_its_traceback(project: Path) -> None:
    """The source model trains, then cannot be published (its folder would be under a file): the run failed."""
    (project / "blocker").write_text("a file where the model's folder would go")
    out = subprocess.run([sys.executable, "-m", "adaptflow", "pretrain", *TINY, "pretrain.output=blocker/source", "--run-dir", "runs/failing"],
                         cwd=project, capture_output=True, text=True, timeout=600)
    assert out.returncode == 6, out.stderr[-3000:]
    assert "Traceback" in out.stderr and out.stderr.splitlines()[-1].startswith("error: the run failed: "), out.stderr[-3000:]
    assert (project / "blocker").read_text().startswith("a file")


def test_results_print_as_a_table_or_as_json(tmp_path: Path) -> None:
    import json

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"weights")
    as_json = _cli("fetch", str(weights), "--json")
    assert as_json.returncode == 0, as_json.stderr
    ref = json.loads(as_json.stdout)
    assert ref["path"] == str(weights) and len(ref["sha256"]) == 64
    table = _cli("fetch", str(weights))
    assert table.returncode == 0, table.stderr
    assert [line.split() for line in table.stdout.splitlines() if line.startswith(("path", "sha256"))] == [["path", str(weights)],
                                                                                                         ["sha256", ref["sha256"]]]


def test_the_stack_is_under_the_main_command_and_its_old_entry_still_works(tmp_path: Path) -> None:
    for command in ([sys.executable, "-m", "adaptflow", "stack", "status"], [sys.executable, "-m", "adaptflow.app.stack", "status"]):
        out = subprocess.run([*command, "--state-dir", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True)
        assert (out.returncode, out.stdout) == (4, f"no stack running from {tmp_path / 'none'}\n"), out.stderr
    out = subprocess.run([sys.executable, "-m", "adaptflow.app.stack", "stop", "--state-dir", str(tmp_path / "none")], cwd=REPO,
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, f"no stack running from {tmp_path / 'none'}\n"), out.stderr
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/adaptflow stack up --state-dir" in makefile and "$(BIN)/adaptflow stack down --state-dir" in makefile


def test_shell_completion_offers_the_commands_and_the_presets() -> None:
    def complete(words: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "adaptflow"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "_ADAPTFLOW_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                  "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))})
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert {"run", "stack", "registry", "benchmark"} <= set(complete("adaptflow "))
    assert complete("adaptflow benchmark --preset qu") == ["quick"]


def test_a_download_shows_progress_on_a_terminal_and_none_in_a_pipe(tmp_path: Path) -> None:
    import hashlib
    import pty

    from conftest import QuietHandler, serve_on_loopback

    body = os.urandom(3 << 20)

    class Weights(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_body(body)

    httpd = serve_on_loopback(Weights)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/w.pt"
    command = [sys.executable, "-m", "adaptflow", "fetch", url, "--sha256", hashlib.sha256(body).hexdigest()]
    environ = {**os.environ, "ADAPTFLOW_ROOT": str(tmp_path), "COLUMNS": "120"}
    try:
        piped = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                               env=environ | {"ADAPTFLOW_CACHE": str(tmp_path / "piped")})
        main, terminal = pty.openpty()
        with subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=terminal,
                              env=environ | {"ADAPTFLOW_CACHE": str(tmp_path / "terminal")}) as shown:
            os.close(terminal)
            drawn = b""
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the other end closed
                    break
                if not chunk:
                    break
                drawn += chunk
        os.close(main)
    finally:
        httpd.shutdown()
    assert piped.returncode == 0 and shown.returncode == 0, piped.stderr[-2000:]
    assert "download w.pt" not in piped.stderr and "eta" not in piped.stderr, piped.stderr
    text = drawn.decode(errors="replace")
    assert "download w.pt" in text and "3.1/3.1 MB" in text and "eta" in text, text[-2000:]


def test_a_benchmark_summary_is_a_table_of_each_target(tmp_path: Path, capsys) -> None:
    from adaptflow.console import print_benchmark
    from adaptflow.io import write_json

    write_json(tmp_path / "metrics.json", {"uci_digits": {"source_only": 0.61, "best_method": "coral", "best_method_accuracy": 0.724,
                                                          "best_method_gain": 0.114}, "detection": {"adabn": {"gain": 0.17}}})
    print_benchmark({"report": str(tmp_path / "report.md"), "cells": 12, "mlflow_run_id": "abc"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "benchmark: 12 cells (target-test accuracy, mean over seeds)"
    assert lines[1].split() == ["target", "source-only", "best", "method", "its", "accuracy", "gain", "over", "source-only"]
    assert lines[2].split() == ["uci_digits", "0.6100", "coral", "0.7240", "0.1140"]
    assert any(line.split() == ["report", str(tmp_path / "report.md")] for line in lines[3:])

"""Architecture contracts: layering, and dvc.yaml / CLI / config / flow agreeing with each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

from adaptflow.config import RunConfig
from conftest import REPO

ORCHESTRATION = ("prefect", "tasks", "flows")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_library_never_imports_the_orchestrator() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(_imports(p) & set(ORCHESTRATION))
        for p in (REPO / "adaptflow").rglob("*.py")
        if p.name != "cli.py" and _imports(p) & set(ORCHESTRATION)
    }
    assert offenders == {}


def test_cli_starts_without_importing_prefect() -> None:
    code = "import sys, adaptflow.app.cli; assert 'prefect' not in sys.modules, 'prefect imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tasks_only_wrap_and_flows_only_compose() -> None:
    for path in (REPO / "flows").glob("*.py"):
        assert not (_imports(path) & {"torch", "mlflow", "dvc"}), f"{path.name} does work a task should do"


def test_dvc_stages_match_cli_commands_and_config_sections() -> None:
    from typer.main import get_command

    from adaptflow.app.cli import app

    commands = set(get_command(app).commands)
    stages = {}
    for pipeline in (REPO / "dvc.yaml", REPO / "benchmarks" / "dvc.yaml"):
        stages |= yaml.safe_load(pipeline.read_text())["stages"]
    assert "benchmark" in stages
    sections = set(RunConfig.model_fields)
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert body["cmd"].split()[:2] == ["adaptflow", name] and name in commands
        for entry in body.get("params", []):
            for param in entry if isinstance(entry, str) else [key for keys in entry.values() for key in keys]:
                section, *rest = param.split(".")
                assert section in sections, f"{name}: unknown params section {section}"
                if rest:
                    assert rest[0] in RunConfig.model_fields[section].annotation.model_fields, f"{name}: {param}"
        for item in stage.get("foreach", {}).values():
            assert (REPO / item["config"]).exists(), f"{name}: {item['config']} is missing"


def test_transfer_flow_runs_each_stage_task() -> None:
    source = (REPO / "flows" / "transfer.py").read_text()
    for task in ("version_data_task", "fetch_pretrained_task", "finetune_task", "evaluate_task", "register_task"):
        assert f"{task}(" in source or f"{task}.submit(" in source


def test_prefect_yaml_detection_deployments_run_the_shipped_detection_config() -> None:
    from adaptflow.config import load_config, parse_config

    shipped = load_config(REPO / "configs" / "detection.yaml")
    declared = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    for name in ("pretrain-detection", "transfer-detection", "retrain-detection"):
        assert parse_config(declared[name]["parameters"]["config"], name) == shipped, name
    imagenet = load_config(REPO / "configs" / "imagenet.yaml")
    for name in ("transfer-imagenet", "retrain-imagenet"):
        assert parse_config(declared[name]["parameters"]["config"], name) == imagenet, name
    retrain = declared["retrain-detection"]["triggers"][0]["match"]["prefect.resource.id"]
    assert retrain == f"adaptflow.data.{shipped.data.target}"


def test_adaptflow_serve_and_prefect_yaml_offer_the_same_deployments() -> None:
    """What `adaptflow serve` runs in one process is what `prefect deploy --all` puts on a work pool."""
    from adaptflow.config import load_config
    from adaptflow.orchestration.flows.deployments import benchmark_deployment, deployments, sweep_deployment

    served = [*deployments(load_config(REPO / "params.yaml")), benchmark_deployment(),
              sweep_deployment(load_config(REPO / "params.yaml")),
              *deployments(load_config(REPO / "configs" / "detection.yaml"), suffix="-detection"),
              *deployments(load_config(REPO / "configs" / "imagenet.yaml"), suffix="-imagenet")]
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert sorted((d.name, d.entrypoint) for d in served) == sorted((d["name"], d["entrypoint"]) for d in declared)

"""Architecture contracts: layering, and dvc.yaml / CLI / config / flow agreeing with each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import import_graph
from adaptflow.config import RunConfig
from conftest import REPO

#: The layers of the package, by module name: the app (the command line and its entry point, the stack
#: supervisor) may import anything; the Prefect layer anything but the app; the core (the rest) neither.
APP = ("adaptflow.app", "adaptflow.__main__")
ORCHESTRATION = "adaptflow.orchestration"
TASKS, FLOWS = f"{ORCHESTRATION}.tasks", f"{ORCHESTRATION}.flows"
#: The orchestrator's packages, and the repository's entry points onto the Prefect layer (`flows/`, `tasks/`).
PREFECT = ("prefect", "prefect_dask", "prefect_ray", "flows", "tasks")


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _layer(module: str) -> str:
    return "app" if _within(module, *APP) else "orchestration" if _within(module, ORCHESTRATION) else "core"


def _forbid(rule, why: str) -> None:  # noqa: ANN001 - a predicate on an Edge
    """Fail naming every import that `rule` picks, with where it is written, after `why`."""
    offenders = [f"  {edge}" for edge in import_graph.edges(REPO) if rule(edge)]
    if offenders:
        pytest.fail(f"{why}:\n" + "\n".join(offenders), pytrace=False)


def test_the_core_never_imports_prefect() -> None:
    """Every module of the core, any import (deferred or for typing too): the core runs with no orchestrator."""
    _forbid(lambda e: _layer(e.source) == "core" and _within(e.target, *PREFECT),
            "the core (adaptflow minus app and orchestration) imports Prefect; move the code into adaptflow/orchestration "
            "or pass what it needs in as a value")


def test_the_core_never_imports_the_app_or_the_prefect_layer() -> None:
    _forbid(lambda e: _layer(e.source) == "core" and _layer(e.target) != "core" and _within(e.target, "adaptflow"),
            "the core imports a layer above it (adaptflow.app, adaptflow.orchestration); the import belongs the other way round")


def test_the_prefect_layer_never_imports_the_app() -> None:
    _forbid(lambda e: _layer(e.source) == "orchestration" and _layer(e.target) == "app",
            "adaptflow.orchestration imports the app layer above it")


def test_tasks_never_import_flows() -> None:
    _forbid(lambda e: _within(e.source, TASKS) and (_within(e.target, FLOWS) or _within(e.target, "flows")),
            "a task imports a flow (flows compose tasks, not the other way round)")


def test_no_import_cycles_between_adaptflow_modules() -> None:
    """Every import that a module runs counts, deferred ones inside functions too: a deferred import hides a
    cycle from Python at import time, not from the reader. Only `if TYPE_CHECKING:` imports (never run) and a
    file's `if __name__ == "__main__":` block (run by the script `__main__`, not by the module) do not count.
    Importing `a.b.c` runs the packages `a.b` and `a` first, so those count as imported too."""
    graph = [e for e in import_graph.edges(REPO) if e.when in ("module", "function") and _within(e.target, "adaptflow")]
    found = import_graph.cycles(graph)
    if found:
        lines = [f"  {import_graph.chain(cycle)}" + (f"\n    (a group of {len(group)} modules: {', '.join(sorted(group))})"
                                                      if len(group) > len(cycle) else "") for cycle, group in found]
        pytest.fail(f"{len(found)} group(s) of adaptflow modules import each other, one cycle of each below ([file:line] of "
                    "each import; 'function': a deferred import); break it by moving what both need into a lower module:\n"
                    + "\n".join(lines), pytrace=False)


def test_the_import_graph_sees_every_module_and_each_kind_of_import() -> None:
    """The contracts above read every module of the package, and tell the kinds of imports apart."""
    graph = import_graph.edges(REPO)
    assert set(import_graph.modules(REPO)) == {import_graph.module_name(p, REPO) for p in (REPO / "adaptflow").rglob("*.py")}
    kinds = {(e.source, e.target): e.when for e in graph}
    assert kinds[("adaptflow.app.cli", "adaptflow.app.cli_common")] == "module"
    assert kinds[("adaptflow.app.cli_operations", "adaptflow.orchestration.flows.deployments")] == "function"
    assert kinds[("adaptflow.stages", "adaptflow.config")] == "typing"
    assert kinds[("adaptflow.app.stack", "adaptflow.app.cli")] == "script"
    # `from adaptflow.orchestration.tasks.data import ...` imports the packages on the way as well
    assert {("adaptflow.orchestration.flows.transfer", t) for t in (TASKS, f"{TASKS}.data")} <= set(kinds)


def test_cli_starts_without_importing_prefect() -> None:
    code = "import sys, adaptflow.app.cli; assert 'prefect' not in sys.modules, 'prefect imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tasks_only_wrap_and_flows_only_compose() -> None:
    for path in (REPO / "adaptflow" / "orchestration" / "flows").glob("*.py"):
        assert not ({i.split(".")[0] for i in _imports(path)} & {"torch", "mlflow", "dvc"}), f"{path.name} does work a task should do"


def test_the_top_level_flows_and_tasks_folders_are_only_entry_points() -> None:
    """`flows/` and `tasks/` (prefect.yaml's entry points) only import from adaptflow.orchestration and define nothing."""
    for path in [*(REPO / "flows").glob("*.py"), *(REPO / "tasks").glob("*.py")]:
        tree = ast.parse(path.read_text())
        assert all(i.startswith(ORCHESTRATION + ".") for i in _imports(path)), f"{path.relative_to(REPO)}: imports {_imports(path)}"
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], f"{path.relative_to(REPO)} defines code"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_dvc_stages_match_cli_commands_and_config_sections() -> None:
    from typer.main import get_command

    from adaptflow.app.cli import app

    commands = set(get_command(app).commands)
    stages = {}
    for pipeline in (REPO / "dvc.yaml", REPO / "benchmark" / "dvc.yaml"):
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
    from adaptflow.stages import TRANSFER_STAGES

    source = (REPO / "adaptflow" / "orchestration" / "flows" / "transfer.py").read_text()
    for task in (f"{stage}_task" for stage in TRANSFER_STAGES):
        assert f"{task}(" in source or f"{task}.submit(" in source, task


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

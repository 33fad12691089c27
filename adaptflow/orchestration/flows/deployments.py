"""The deployments: what `adaptflow serve` runs in one process, and what prefect.yaml declares
for a work pool. Parameters are the typed config, so the Prefect UI renders them as a form.
Classification deployments are `pretrain`, `transfer`, `retrain`; detection ones end in `-detection`;
`benchmark` and `sweep` take their spec and grid as parameters.

A deployment's entrypoint is the repository's thin entry point (`flows/NAME.py:FLOW`), as prefect.yaml
declares, so that what `adaptflow serve` runs and what a work pool runs load the flow the same way."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from adaptflow.benchmark import load_preset
from adaptflow.config import RunConfig
from adaptflow.orchestration.flows.benchmark import benchmark
from adaptflow.orchestration.flows.pretrain import pretrain
from adaptflow.orchestration.flows.retrain import retrain
from adaptflow.orchestration.flows.sweep import sweep
from adaptflow.orchestration.flows.transfer import transfer

#: The repository's entry points onto the flows (flows/NAME.py), which prefect.yaml names; absent from a wheel.
ENTRY_POINTS = Path(__file__).resolve().parents[3] / "flows"
#: The event `adaptflow data add` emits when new labeled target data lands.
DATA_ADDED = "adaptflow.data.added"
NIGHTLY = "0 2 * * *"


def data_added_trigger(target: str) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="retrain when data lands",
        expect={DATA_ADDED},
        match={"prefect.resource.id": f"adaptflow.data.{target}"},
        within=0,
    )


def _deployment(flow, name: str, **settings):  # noqa: ANN001, ANN202 - a Flow, a RunnerDeployment
    """`flow.to_deployment(name, ...)`, whose entrypoint is the flow's entry point under `flows/` where the
    repository has one (relative to this directory, as Prefect writes it), else the flow's own module."""
    deployment = flow.to_deployment(name, **settings)
    entry = ENTRY_POINTS / f"{flow.fn.__module__.rsplit('.', 1)[-1]}.py"
    if entry.is_file():
        deployment.entrypoint = f"{Path(os.path.relpath(entry, Path.cwd()))}:{flow.fn.__name__}"
    return deployment


def deployments(config: RunConfig, cron: str = NIGHTLY, schedule_active: bool = False, suffix: str = "") -> list:
    """pretrain (when the config has a source domain), transfer and retrain (nightly, off until enabled;
    also triggered when data lands in the config's target domain), named with `suffix` (e.g. `-detection`)."""
    defaults = {"config": config.model_dump(mode="json")}
    tags = ["adaptflow", config.task]
    sourced = [] if config.data.source is None else [
        _deployment(pretrain, f"pretrain{suffix}", parameters=defaults, tags=tags,
                    description=f"Train the source {config.pretrain.arch} on {config.data.source} and publish it."),
    ]
    return [
        *sourced,
        _deployment(transfer, f"transfer{suffix}", parameters=defaults, tags=tags,
                    description=f"Adapt the pretrained {config.task} model to {config.data.target} and register it through the champion gate."),
        _deployment(
            retrain, f"retrain{suffix}", parameters=defaults, tags=tags,
            schedules=[Cron(cron, timezone="UTC", active=schedule_active)],
            triggers=[data_added_trigger(config.data.target)],
            description="Version the data; retrain only if data or config changed; promote only a better model.",
        ),
    ]


def benchmark_deployment():  # noqa: ANN201 - a RunnerDeployment
    """The benchmark flow, with the quick preset as its default spec."""
    return _deployment(
        benchmark, "benchmark", parameters={"spec": load_preset("quick").model_dump(mode="json")}, tags=["adaptflow", "benchmark"],
        description="Transfer strategies and domain adaptation methods against scratch and source-only baselines, with a report.",
    )


def sweep_deployment(config: RunConfig):  # noqa: ANN201 - a RunnerDeployment
    """The sweep flow on the config, with a learning-rate grid as its default. Its `settings`
    form picks the runner (thread, dask, ray) and the GPU pool for each run from the UI."""
    from adaptflow.sweep import DEFAULT_GRID, SweepSettings

    return _deployment(
        sweep, "sweep", parameters={"config": config.model_dump(mode="json"), "grid": DEFAULT_GRID, "settings": SweepSettings().model_dump(mode="json")},
        tags=["adaptflow", "sweep"],
        description="Fine-tune and evaluate every combination of a grid of config values; pick the best without the target test set.",
    )


def serve(
    config: RunConfig, cron: str = NIGHTLY, schedule_active: bool = False, detection: RunConfig | None = None,
    imagenet: RunConfig | None = None,
) -> None:
    """Serve every deployment from this process until interrupted (the `-detection` and `-imagenet` ones
    too when those configs are given)."""
    from prefect import serve as prefect_serve

    served = [*deployments(config, cron, schedule_active), benchmark_deployment(), sweep_deployment(config)]
    if detection is not None:
        served += deployments(detection, cron, schedule_active, suffix="-detection")
    if imagenet is not None:
        served += deployments(imagenet, cron, schedule_active, suffix="-imagenet")
    prefect_serve(*served)

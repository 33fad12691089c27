"""The deployments: what `adaptflow serve` runs in one process, and what prefect.yaml declares
for a work pool. Parameters are the typed config, so the Prefect UI renders them as a form."""

from __future__ import annotations

import tasks  # noqa: F401 - applies the offline defaults before Prefect starts

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from adaptflow.benchmark import load_preset
from adaptflow.config import RunConfig
from flows.benchmark import benchmark
from flows.pretrain import pretrain
from flows.retrain import retrain
from flows.transfer import transfer

#: The event `adaptflow data add` emits when new labeled target data lands.
DATA_ADDED = "adaptflow.data.added"
NIGHTLY = "0 2 * * *"


def data_added_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="retrain when data lands",
        expect={DATA_ADDED},
        match={"prefect.resource.id": "adaptflow.data.*"},
        within=0,
    )


def deployments(config: RunConfig, cron: str = NIGHTLY, schedule_active: bool = False) -> list:
    """pretrain, transfer, retrain (nightly, off until enabled; also triggered when data lands) and benchmark."""
    defaults = {"config": config.model_dump(mode="json")}
    tags = ["adaptflow", config.task]
    return [
        pretrain.to_deployment("pretrain", parameters=defaults, tags=tags,
                               description="Train the source model on the source domain and publish it."),
        transfer.to_deployment("transfer", parameters=defaults, tags=tags,
                               description="Adapt the pretrained model to the target domain and register it through the champion gate."),
        retrain.to_deployment(
            "retrain", parameters=defaults, tags=tags,
            schedules=[Cron(cron, timezone="UTC", active=schedule_active)],
            triggers=[data_added_trigger()],
            description="Version the data; retrain only if data or config changed; promote only a better model.",
        ),
        benchmark.to_deployment(
            "benchmark", parameters={"spec": load_preset("quick").model_dump(mode="json")}, tags=["adaptflow", "benchmark"],
            description="Transfer strategies and domain adaptation methods against scratch and source-only baselines, with a report.",
        ),
    ]


def serve(config: RunConfig, cron: str = NIGHTLY, schedule_active: bool = False) -> None:
    """Serve every deployment from this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(config, cron, schedule_active))

"""The transfer pipeline as plain function calls, and the pieces the flow and DVC share.

A run folder holds each stage's outputs in a sub-folder named after the stage:

    <run_dir>/finetune/{model.pt, history.json, train_state.pt}
    <run_dir>/evaluate/{metrics.json, report.json, plots: confusion_matrix.png or pr_curve.png, predictions.png}
    <run_dir>/register/registration.json
    <run_dir>/run.json            (config, data version, pretrained model, MLflow run id)

Prefect (`adaptflow.orchestration.flows.transfer`) and DVC (`dvc.yaml`, through the CLI) call the same
stages (`adaptflow.stages.RunStages`); `run_transfer` is the same sequence (`stages.TRANSFER_STAGES`) with no
orchestrator, used by tests and benchmarks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from adaptflow import env, tracking
from adaptflow.config import RunConfig
from adaptflow.io import read_json, sha256_file, write_json, write_yaml
from adaptflow.pretrain import PublishedModel, published_dir
from adaptflow.weights import FetchError, PretrainedRef, fetch_pretrained, sidecar_digest
from adaptflow.stages import RunStages, for_task
from adaptflow.tracking.packaging import Registration
from adaptflow.versioning import DataVersion, version_data

log = logging.getLogger(__name__)


def lineage(config: RunConfig, data: DataVersion, pretrained: PretrainedRef, origin: str) -> dict[str, str]:
    """What makes a model reproducible: code commit, data version, pretrained model, config, origin run."""
    return {
        "git_commit": tracking.git_commit(),
        "data_version": data.md5,
        "data_path": data.path,
        "pretrained_uri": pretrained.uri,
        "pretrained_sha256": pretrained.sha256,
        "pretrained_package": pretrained.package or "",
        "config_digest": config.digest(),
        "origin": origin,
        "prefect_flow_run_id": origin if origin not in ("cli", "local") else "",
        "task": config.task,
        "arch": config.finetune.arch,
        "target_domain": config.data.target,
        "source_domain": config.data.source or "",
        **domain_digests(config),
        "validation_digest": validation_digest(config),
    }


def domain_digests(config: RunConfig) -> dict[str, str]:
    """The content hash of each domain the run reads (`target_digest`, and `source_digest` with a source)."""
    from adaptflow.data import domain_digest

    domains = {"target_digest": config.data.target, "source_digest": config.data.source}
    return {key: domain_digest(config.data, name) for key, name in domains.items() if name is not None}


def validation_digest(config: RunConfig) -> str:
    """A hash of the labeled images held out to validate the run ('' without a validation set): the
    registry gate compares validation metrics only between versions that held out the same images."""
    from adaptflow.data import list_classes, split_dir, target_validation
    from adaptflow.finetune import content_digest

    if config.task != "classification":
        return ""
    val = target_validation(config.data, list_classes(split_dir(config.data, config.data.target, "train")))
    return content_digest(val) if val is not None else ""


def write_run_record(
    config: RunConfig, data: DataVersion, pretrained: PretrainedRef, run_dir: Path, origin: str, mlflow_run_id: str | None = None
) -> Path:
    """`<run_dir>/run.json`: what this run was made from (and the thread budget it trains with), read back by the register stage."""
    return write_json(run_dir / "run.json", {
        "config": config.model_dump(mode="json"),
        "data": data.to_dict(),
        "pretrained": pretrained.to_dict(),
        "mlflow_run_id": mlflow_run_id,
        "origin": origin,
        "threads_used": env.threads_for(config.threads),
    })


def run_params(config: RunConfig, threads_used: int | None = None) -> dict:
    """The run's MLflow params: its config, and the thread count `threads` came to (`threads_used`)."""
    return config.model_dump(mode="json") | {"threads_used": threads_used or env.threads_for(config.threads)}


def read_run_record(run_dir: Path, *, evaluated: bool = False) -> dict:
    """`<run_dir>/run.json` of a run folder the finetune stage (and, if `evaluated`, the evaluate stage) filled."""
    needs = {"run.json": "finetune", "finetune/model.pt": "finetune"} | ({"evaluate/metrics.json": "evaluate"} if evaluated else {})
    for name, stage in needs.items():
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name} in this run folder; run the {stage} stage into it first: "
                                    f"adaptflow {stage} --run-dir {run_dir}")
    return read_json(run_dir / "run.json")


def open_run(config: RunConfig, data: DataVersion, pretrained: PretrainedRef, run_dir: Path, origin: str, run_name: str) -> str:
    """Open the MLflow run for this pipeline run (so epochs log live) and record it in run.json.

    A re-run of the same flow run after a crash finds run.json in its folder and continues the
    same MLflow run (and so registers under the same key) when nothing it was made from changed.
    """
    if (run_dir / "run.json").exists():
        record = read_json(run_dir / "run.json")
        same = (record["config"] == config.model_dump(mode="json") and record["data"]["md5"] == data.md5
                and record["pretrained"]["sha256"] == pretrained.sha256)
        if same and record.get("mlflow_run_id") and tracking.resume_run(config.tracking, record["mlflow_run_id"]):
            return record["mlflow_run_id"]
    key = tracking.work_key("transfer", config.model_dump(mode="json"), data.md5, pretrained.sha256)
    run_id = tracking.start_run(config.tracking, run_name, lineage(config, data, pretrained, origin), run_params(config), work_key=key)
    write_run_record(config, data, pretrained, run_dir, origin, run_id)
    return run_id


def register_run(config: RunConfig, run_dir: Path) -> Registration:
    """Register the model of a finished run folder: artifacts, model version, champion gate.

    A run folder made without tracking (the DVC stages, or a run whose tracking store was down)
    gets its MLflow run here; epochs the run is missing are replayed from history.json. Safe to
    repeat: the same run and model never make a second version.
    """
    try:
        return _register_run(config, run_dir)
    except tracking.TrackingUnavailable as exc:
        raise tracking.TrackingUnavailable(
            f"{exc}\nThe model and metrics are kept in {run_dir}; once the store is back, register them with "
            f"`adaptflow register --from-run-dir {run_dir}`"
        ) from exc


def _register_run(config: RunConfig, run_dir: Path) -> Registration:
    record = read_run_record(run_dir, evaluated=True)
    data = DataVersion(**record["data"])
    pretrained = PretrainedRef(**record["pretrained"])
    run_id = record["mlflow_run_id"]
    opened = run_dir / "register" / "mlflow_run.json"
    if run_id is None and opened.exists():
        run_id = read_json(opened)["mlflow_run_id"]
    if run_id is None:
        run_id = tracking.start_run(config.tracking, run_dir.name, lineage(config, data, pretrained, record["origin"]),
                                    run_params(config, record.get("threads_used")))
        # Recorded at once, so a repeated register reuses this run and its registration key
        # (beside run.json, which the stages before this one own).
        write_json(opened, {"mlflow_run_id": run_id})
    with tracking.ended_on_failure(config.tracking, run_id):
        tracking.log_history(config.tracking, run_id, read_json(run_dir / "finetune" / "history.json"))
        write_yaml(run_dir / "config.yaml", tracking.redacted(config.model_dump(mode="json")))
        metrics = read_json(run_dir / "evaluate" / "metrics.json")
        artifacts = [run_dir / "config.yaml", *sorted((run_dir / "evaluate").glob("*.json")), *sorted((run_dir / "evaluate").glob("*.png"))]
        registration = tracking.register_model(
            config.registry,
            config.tracking,
            run_id,
            run_dir / "finetune" / "model.pt",
            metrics,
            lineage(config, data, pretrained, record["origin"]),
            artifacts,
            champion_metrics=remeasure_champion(config),
        )
        write_json(run_dir / "register" / "registration.json", registration.to_dict())
    tracking.finish_run(config.tracking, run_id)
    return registration


def remeasure_champion(config: RunConfig) -> dict[str, float] | None:
    """The current champion's metrics on today's test sets, so that challenger and champion are
    compared on the same images; None without a champion or when `registry.reevaluate_champion` is off."""
    if not config.registry.reevaluate_champion:
        return None
    current = tracking.champion(config.registry, config.tracking)
    if current is None:
        return None
    ref = fetch_pretrained(f"models:/{config.registry.model_name}/{current.version}", tracking_uri=tracking.tracking_uri(config.tracking))
    return for_task(config.task).measure(config.evaluate, config.data, ref.path, config.finetune.device)


def retrain_decision(config: RunConfig, data: DataVersion) -> tuple[bool, str]:
    """Whether a scheduled or triggered retraining should train: only when the data or the config
    differ from what the current champion was made from."""
    current = tracking.champion(config.registry, config.tracking)
    if current is None:
        return True, "no champion yet"
    if f"{tracking.TAG}target_digest" in current.tags:  # the domains it read, not the whole data version
        for key, digest in domain_digests(config).items():
            made_from = current.tags.get(f"{tracking.TAG}{key}", "")
            if made_from != digest:
                domain = key.removesuffix("_digest")
                return True, (f"{domain} domain changed since champion v{current.version}: {made_from[:12] or 'unknown'} -> "
                              f"{digest[:12]}")
        reason = f"domains {', '.join(filter(None, (config.data.target, config.data.source)))} unchanged"
    else:
        made_from = current.tags.get(f"{tracking.TAG}data_version", "")
        if made_from != data.md5:
            return True, f"data changed since champion v{current.version}: {made_from[:12] or 'unknown'} -> {data.md5[:12]}"
        reason = f"data {data.md5[:12]} unchanged"
    if current.tags.get(f"{tracking.TAG}config_digest") != config.digest():
        return True, f"config changed since champion v{current.version}"
    return False, f"{reason} and config {config.digest()} unchanged since champion v{current.version}"


def record_skip(config: RunConfig, data: DataVersion, reason: str, origin: str) -> str:
    """An MLflow run that records a retraining that decided not to train, and why."""
    tags = {"stage": "retrain", "decision": "skipped", "reason": reason, "data_version": data.md5, "origin": origin,
            "config_digest": config.digest()}
    run_id = tracking.start_run(config.tracking, f"retrain-skipped-{data.md5[:8]}", tags, {})
    tracking.finish_run(config.tracking, run_id)
    return run_id


def run_pretrain(config: RunConfig, run_dir: Path, data: DataVersion, origin: str = "local") -> PublishedModel:
    """Train and publish the source model, recorded as an MLflow run of its own.

    A published model made from the same inputs (task, pretrain and data settings, data version,
    and the same commit of a checkout without changes) is kept and nothing trains: `inputs.json`
    beside it records them. Deleting the published folder trains again regardless.
    """
    inputs = {"task": config.task, "pretrain": config.pretrain.model_dump(mode="json"), "data": config.data.model_dump(mode="json"),
              "data_version": data.md5, "git_commit": tracking.git_commit()}
    kept = _published_from(published_dir(config.pretrain), inputs)
    if kept is not None:
        log.info("source model %s is up to date (same data version, settings and commit): not trained again", kept.path)
        return kept
    threads = env.apply_threads(config.threads)
    run_id = _open_pretrain_run(config, run_dir, inputs, origin, threads)
    with tracking.ended_on_failure(config.tracking, run_id):
        published = for_task(config.task).pretrain(config.pretrain, config.data, run_dir / "pretrain", tracking.epoch_logger(config.tracking, run_id))
        tracking.log_metrics(config.tracking, run_id, published.metrics)
        tracking.set_tags(config.tracking, run_id, {"published_path": published.path, "published_sha256": published.sha256})
    tracking.finish_run(config.tracking, run_id)
    write_json(Path(published.path).with_name("inputs.json"), inputs)  # last: a folder without it is trained again
    return published


def _open_pretrain_run(config: RunConfig, run_dir: Path, inputs: dict, origin: str, threads: int) -> str:
    """The pretrain's MLflow run: the one an interrupted pretrain of the same inputs in this run folder
    left open (training resumes from its checkpoint, so the run goes on too), else a new one, recorded
    in `<run_dir>/pretrain/mlflow_run.json` at once."""
    record_path = run_dir / "pretrain" / "mlflow_run.json"
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        record = {}
    run_id = record.get("mlflow_run_id") if record.get("inputs") == inputs else None
    if run_id and tracking.run_status(config.tracking, run_id) not in (None, "FINISHED") and tracking.resume_run(config.tracking, run_id):
        log.info("continuing MLflow run %s of the interrupted pretrain in %s", run_id, run_dir)
        return run_id
    tags = {"git_commit": inputs["git_commit"], "data_version": inputs["data_version"], "origin": origin, "stage": "pretrain",
            "arch": config.pretrain.arch, "source_domain": config.data.source}
    run_id = tracking.start_run(config.tracking, f"pretrain-{run_dir.name}", tags, {"pretrain": inputs["pretrain"], "data": inputs["data"],
                                                                                      "threads": config.threads, "threads_used": threads},
                                work_key=tracking.work_key("pretrain", inputs))
    write_json(record_path, {"mlflow_run_id": run_id, "inputs": inputs})
    return run_id


def _published_from(folder: Path, inputs: dict) -> PublishedModel | None:
    """The model published in `folder` if it was made from `inputs` and is intact; None otherwise
    (always for a checkout with changes or outside git, where the code it ran cannot be named)."""
    commit = inputs["git_commit"]
    if commit == "unknown" or commit.endswith("-dirty"):
        return None
    model = folder / "model.pt"
    try:
        if read_json(folder / "inputs.json") != inputs:
            return None
        recorded = sidecar_digest(folder / "model.pt.sha256")
        metrics = read_json(folder / "metrics.json")
    except (OSError, ValueError, FetchError):
        return None
    return PublishedModel(str(model), recorded, metrics) if model.is_file() and sha256_file(model) == recorded else None


def run_scratch_baseline(config: RunConfig, run_dir: Path) -> dict[str, float]:
    """The run's fine-tune and evaluation with `pretrained.uri=scratch`: the same network and labels from
    random weights (the whole network trains at `finetune.lr`), not tracked or registered. Returns the
    evaluation's metrics and the training time (`train_seconds`)."""
    import time

    from adaptflow.weights import SCRATCH

    scratch = config.finetune.model_copy(update={"strategy": "finetune", "backbone_lr_scale": 1.0, "l2sp": 0.0})
    stages = RunStages(config.model_copy(update={"finetune": scratch}))
    pretrained = fetch_pretrained(SCRATCH)
    started = time.perf_counter()
    model = stages.finetune(pretrained, run_dir)
    seconds = time.perf_counter() - started
    metrics = stages.evaluate(model.path, pretrained, run_dir)
    return {**metrics, "train_seconds": seconds}


def run_transfer(config: RunConfig, run_dir: Path, origin: str = "local", version: bool = True) -> dict:
    """version data -> fetch pretrained -> fine-tune -> evaluate -> register, with no orchestrator."""
    from adaptflow.validate import validate
    from adaptflow.versioning import read_version

    env.apply_threads(config.threads)
    validate(config)
    stages = RunStages(config)
    data = version_data(config.data) if version else read_version(config.data)
    pretrained = stages.fetch_pretrained()
    stages.check_pretrained(pretrained)
    run_id = open_run(config, data, pretrained, run_dir, origin, run_dir.name)
    with tracking.ended_on_failure(config.tracking, run_id):
        model = stages.finetune(pretrained, run_dir, tracking.epoch_logger(config.tracking, run_id))
        metrics = stages.evaluate(model.path, pretrained, run_dir)
        registration = register_run(config, run_dir)
    return {"metrics": metrics, "registration": registration.to_dict(), "data_version": data.md5}

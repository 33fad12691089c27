"""`adaptflow data ...` (build, version, add, import) and `adaptflow validate`: the data a run reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptflow import env
from adaptflow.app.cli_common import (
    DATA, DEFAULT_CONFIG, ConfigOption, JsonOption, Overrides, Split, app, data_app, prefect_api, read_config, show,
)


@data_app.command("build")
def data_build(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    force: Annotated[bool, typer.Option(help="Replace domain folders even where they hold files the build does not write")] = False,
) -> None:
    """Build the demo domains under data.root, byte-identical every time: MNIST -> UCI digits
    (classification) and digit scenes on flat backgrounds -> on photographs (detection)."""
    from adaptflow.data import build_all

    cfg = read_config(config, overrides)
    typer.echo(f"built {build_all(env.project_path(cfg.data.root), force=force)}")


@data_app.command("version")
def data_version(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, push: bool = True, as_json: JsonOption = False) -> None:
    """`dvc add` and `dvc push` the data folder; print its version."""
    from adaptflow.versioning import version_data

    show(version_data(read_config(config, overrides).data, push=push).to_dict(), as_json, "data version")


@data_app.command("add")
def data_add(
    source: Annotated[Path, typer.Argument(help="Folder of new labeled images: CLASS/IMAGE, or images/ and labels/ for detection; "
                                                "texts: a CSV or JSONL file (text, label) or a folder of LABEL/*.txt")],
    split: Annotated[Split, typer.Option(help="Split to add them to")] = Split.train,
    domain: Annotated[str | None, typer.Option(help="Domain folder to add them to (default: data.target; e.g. the source)")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
) -> None:
    """Add new labeled images or texts to a domain (the target by default), then announce it (a Prefect event that triggers retraining)."""
    from adaptflow.data import split_dir
    from adaptflow.data.ingest import add_images
    from adaptflow.detection.ingest import add_detection_images

    # Another domain is added to as the config's target would be: its name is checked as data.target is.
    cfg = read_config(config, [*(overrides or []), *([f"data.target={domain}"] if domain else [])])
    target = cfg.data.target
    api = prefect_api(outcome="; nothing was added")  # first: a retry after a lost announcement would add nothing, and announce nothing
    dest = split_dir(cfg.data, target, split.value)
    what = "texts" if cfg.task == "text_classification" else "images"
    if cfg.task == "text_classification":
        from adaptflow.text.ingest import add_texts

        added = add_texts(source, cfg.data, target, split.value)
    elif cfg.task == "detection":
        from adaptflow.detection.data import read_names

        added = add_detection_images(source, dest, len(read_names(dest.parent)))
    else:
        added = add_images(source, dest, cfg.data.window)
    typer.echo(f"added {sum(added.values())} {what} to {target}/{split.value}: {added}")
    if not added:
        return
    if api is None:
        typer.echo("no PREFECT_API_URL: no event sent; run `adaptflow run retrain` to retrain on it")
        return
    from prefect.events import emit_event

    emit_event(
        event="adaptflow.data.added",
        resource={"prefect.resource.id": f"adaptflow.data.{target}", "prefect.resource.name": target},
        payload={"split": split.value, "added": added},
    )
    typer.echo("event adaptflow.data.added sent: the retrain deployment will pick it up")


@data_app.command("import")
def data_import(
    target: Annotated[Path, typer.Argument(help="Your dataset: split folders (train and test; also unlabeled, val; or names such as "
                                                "train_labeled, testing) of class folders of images; texts: split files "
                                                "(train.csv, test.jsonl, ...: text and label columns) or folders of LABEL/*.txt")],
    name: Annotated[str, typer.Option(help="The dataset's name: its domain folder, its config (configs/NAME.yaml), its registered model")],
    source: Annotated[Path | None, typer.Option(help="A source domain's folder (labeled, the same classes): pretrain on it, then adapt; "
                                                     "without it, runs start from ImageNet weights (texts: the packaged "
                                                     "sentence encoder)")] = None,
    split: Annotated[list[str] | None, typer.Option(help="THEIRS=OURS maps a split folder (OURS: train, unlabeled, test, val)")] = None,
    overrides: Overrides = None,
) -> None:
    """Make your folders a dataset of the project: copied under data.root with the split names the pipeline reads, checked,
    and given a config whose linked settings agree; then it prints the commands that train and register it."""
    from adaptflow.data.importer import DatasetImportError, import_dataset

    mapping = {}
    for item in split or []:
        theirs, sep, ours = item.partition("=")
        if not sep or not theirs or not ours:
            raise DatasetImportError(f"--split '{item}': write THEIRS=OURS, e.g. --split train_labeled=train")
        mapping[theirs] = ours
    imported = import_dataset(name, target, source, mapping, overrides or [])
    for domain, counts in imported.domains.items():
        typer.echo(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in counts.items()) + (" texts" if imported.text else " images"))
    config = imported.config.relative_to(env.project_root())
    typer.echo(f"config {config} (registered model: {name})\nnext:")
    if imported.source:
        typer.echo(f"  adaptflow run pretrain -c {config}     # the source model, on {imported.source}")
    typer.echo(f"  adaptflow run transfer -c {config}     # fine-tune, evaluate, register")



@app.command("validate", rich_help_panel=DATA)
def validate_data(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    data_only: Annotated[bool, typer.Option("--data-only", help="Check only the data folders a run reads (before a source model, "
                                                              "server or GPU exists)")] = False,
) -> None:
    """Check the data and config before spending compute; exit 3 listing each problem and its fix (4: only the tracking
    server does not answer)."""
    from adaptflow.validate import validate

    report = validate(read_config(config, overrides), "data" if data_only else "transfer")
    typer.echo(f"ok: {report.checked_files} images checked, {len(report.warnings)} warnings")

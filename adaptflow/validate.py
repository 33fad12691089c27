"""Check a run's config and data before any compute is spent.

Every problem names the file (and line, for label files) and says how to fix it. Errors stop
the run before anything is trained or registered; warnings (a few duplicate images, a labeled
split smaller than asked for) are reported and the run goes on.

The checks of each kind of data live with it: image folders and classification datasets in
`adaptflow.data.checks` (with `Report` and `DataValidationError`), YOLO datasets in
`adaptflow.detection.checks`, text splits in `adaptflow.text.data`. This module adds what needs a
whole run's config: the pretrained URI and file, the tracking server, the devices.
"""

from __future__ import annotations


from adaptflow import env
from adaptflow.adapt.selection import VALIDATORS
from adaptflow.config import RunConfig
from adaptflow.data.checks import (BUILD_THE_DATA, IGNORED_NAMES, MAX_PIXELS, TRACKING_FIELD, DataValidationError, Problem, Report,
                                   check_image_domains, check_image_split, check_unlabeled_split, conclude)
from adaptflow.detection.checks import check_detection_split, check_yolo_labels, validate_detection


def check_config(config: RunConfig, report: Report) -> None:
    """Config values that are valid types but cannot work here."""
    from adaptflow.weights import check_uri

    problem = check_uri(config.pretrained.uri)
    if problem:
        report.error("pretrained.uri", *problem)
    else:
        check_pretrained_file(config, report)
    if refused := env.pickle_refused(config.pretrained.allow_pickle):
        report.error("pretrained.allow_pickle", refused.split(", so ")[0],
                     f"ask the operator to set {env.ALLOW_PICKLE_VAR}=1 where the pipeline runs, or re-save the model as a state dict")


def check_pretrained_file(config: RunConfig, report: Report) -> None:
    """A local pretrained file that would be refused when loaded (pickled code, not a model file), found
    without loading it: only the names its pickle refers to are read. Downloads are checked once fetched."""
    import pickle

    import torch

    from adaptflow.weights import ARCHIVE_SUFFIXES
    from adaptflow.weights.local import path_of

    uri = config.pretrained.uri.strip()
    if config.pretrained.allow_pickle or uri.startswith(("torchvision:", "ultralytics:", "models:/", "http://", "https://")):
        return
    path = path_of(uri)
    if not path.is_file() or path.name.endswith(ARCHIVE_SUFFIXES):
        return
    detection = config.task == "detection"
    if detection:
        from adaptflow.detection.yolo import UNTRUSTED_FIX as fix
    else:
        fix = "re-save it as a state dict (torch.save(model.state_dict(), ...)), or set pretrained.allow_pickle=true if you trust its source"
    from adaptflow.models import saved_by_torch

    if not saved_by_torch(path):
        report.error("pretrained.uri", f"{path} is not a PyTorch model file (neither a zip archive nor a pickle)",
                     "check the path, or save the model again with torch.save")
        return
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # not a zip archive: torch's older format, a pickle read whole
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            needed = []
        except pickle.UnpicklingError:
            needed = ["objects weights_only=True refuses"]
        except (RuntimeError, EOFError, OSError) as exc:
            report.error("pretrained.uri", f"{path} is not a PyTorch model file ({str(exc).splitlines()[0][:200]})",
                         "check the path, or save the model again with torch.save")
            return
    if detection and needed:
        from adaptflow.detection.yolo import allowed_global

        needed = [name for name in needed if allowed_global(name) is None]  # an Ultralytics checkpoint's model classes load
    if needed:
        report.error("pretrained.uri", f"{path} holds pickled Python objects ({', '.join(sorted(needed)[:3])}), which can run code "
                     "when loaded", fix)


def check_tracking(config: RunConfig, report: Report) -> None:
    """Whether the MLflow server the run will log to answers (a file store always does)."""
    from adaptflow.tracking.store import server_problem

    problem = server_problem(config.tracking)
    if problem:
        report.error(TRACKING_FIELD, *problem)


def check_devices(config: RunConfig, stage: str, report: Report) -> None:
    """Whether this machine has the GPUs the training stage's `devices` asks for."""
    from adaptflow.distributed import devices_problem

    section = "pretrain" if stage == "pretrain" else "finetune"
    cfg = getattr(config, section)
    problem = devices_problem(section, cfg.device, cfg.devices)
    if problem:
        report.error(problem[0].partition("=")[0], *problem)


def validate(config: RunConfig, stage: str = "transfer") -> Report:
    """Check the config and every split `stage` will read; raise DataValidationError on errors.

    `pretrain` reads only the source domain; `transfer` reads both and the pretrained URI; `finetune` is
    `transfer` with, for detection, only the splits the fine-tune stage trains on; `data` checks the folders
    a transfer reads and nothing else (no model, server or device needs to exist yet).
    """
    report = Report()
    if stage in ("transfer", "finetune"):
        check_config(config, report)
    if stage == "pretrain":
        try:  # what a run writes stays in the project
            env.inside_project(config.pretrain.output, "pretrain.output")
        except ValueError as exc:
            report.error("pretrain.output", str(exc).split("; ")[0], "give a folder inside the project, e.g. pretrain.output=models/source")
    if stage != "data":
        check_devices(config, stage, report)
        check_tracking(config, report)
    if config.task == "detection":
        validate_detection(config, stage, report)
    elif config.task == "text_classification":
        from adaptflow.text.data import check_text_domains

        wanted = ("unlabeled",) if config.finetune.methods or config.finetune.keep_epoch in VALIDATORS else ()
        if stage == "pretrain" and config.data.source is None:
            report.error("data.source", "empty: the text pretrain stage fine-tunes the encoder on a source domain's labels",
                         "set data.source (e.g. movie_reviews), or skip the stage and start from the encoder: pretrained.uri=package:minilm_l6")
        check_text_domains(config.data, wanted, report, source=True)
    else:
        check_image_domains(config, stage, report)
    return conclude(report, config)


__all__ = ["BUILD_THE_DATA", "IGNORED_NAMES", "MAX_PIXELS", "TRACKING_FIELD", "DataValidationError", "Problem", "Report", "check_config",
           "check_detection_split", "check_devices", "check_image_split", "check_pretrained_file", "check_tracking",
           "check_unlabeled_split", "check_yolo_labels", "validate"]

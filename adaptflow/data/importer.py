"""A user's dataset made into a project dataset in one step: its folders copied under the data root with
the split names the pipeline reads, and a config of its own (`configs/<name>.yaml`) whose linked settings
agree (the registered model named after the dataset, the source model's folder and the URI that loads it).

    adaptflow data import ~/scans --name scans                  # target only: starts from ImageNet weights
    adaptflow data import ~/scans --name scans --source ~/old   # a source domain too: pretrain on it, then adapt
    adaptflow data import ~/reviews --name reviews              # texts: starts from the packaged sentence encoder

Split folders are recognised by their usual names (`train_labeled`, `training` -> train; `train_unlabeled`
-> unlabeled; `testing`, `eval` -> test; `valid`, `validation` -> val), or mapped with `--split THEIRS=OURS`.
A folder whose splits are CSV or JSONL files (`train.csv`, `testing.jsonl`, ...; `text` and `label` columns),
or folders of `.txt` files per label, is a text dataset: `task: text_classification`, from the packaged
sentence encoder (or, with a source, the encoder fine-tuned on the source's labels first).
Nothing is left half-done: the copy is staged beside the data root, checked (`validate`, data only), and
only then renamed into place with its config.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from adaptflow import env
from adaptflow.config import RunConfig, dump_params, load_config
from adaptflow.data.checks import DataValidationError, Report, validate_images
from adaptflow.data.folders import IMAGE_SUFFIXES
from adaptflow.errors import UserError
from adaptflow.text.data import TEXT_FILE, TEXT_SUFFIXES, read_rows

#: The split names the pipeline reads, and the names datasets commonly give them.
SPLIT_NAMES = {
    "train": ("train", "training", "train_labeled", "train_labelled", "labeled", "labelled"),
    "unlabeled": ("unlabeled", "unlabelled", "train_unlabeled", "train_unlabelled", "unlabeled_train"),
    "test": ("test", "testing", "eval", "evaluation", "holdout"),
    "val": ("val", "valid", "validation", "dev"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Where a dataset with no source domain starts: ImageNet weights that ship in a package.
IMAGENET = {"pretrained.uri": "package:efficientnet_lite0", "arch": "efficientnet_lite0"}
#: A text dataset's settings: the packaged sentence encoder, trained as the text benchmark found best (docs/text.md).
TEXT = {"task": "text_classification", "finetune.arch": "minilm_l6", "pretrain.arch": "minilm_l6", "data.max_length": "128",
        "finetune.batch_size": "16", "finetune.lr": "0.002", "finetune.backbone_lr_scale": "0.025", "finetune.weight_decay": "0.01",
        "finetune.augment": "false", "finetune.epochs": "10", "pretrain.epochs": "2", "pretrain.batch_size": "16",
        "pretrain.lr": "0.002", "pretrain.weight_decay": "0.01", "pretrain.augment": "false", "registry.metric": "target_macro_f1"}


class DatasetImportError(UserError, ValueError):
    """The folders cannot become a dataset as asked; the message says why and what to do."""


@dataclass
class Imported:
    """What `import_dataset` made: the domains, their image counts per split, and the config."""

    name: str
    config: Path
    domains: dict[str, dict[str, int]] = field(default_factory=dict)
    source: str | None = None
    text: bool = False


def map_splits(folder: Path, mapping: dict[str, str]) -> dict[str, Path]:
    """{the pipeline's split: the user's folder or text file} for the sub-folders of `folder` and its CSV and JSONL
    files named after a split; `mapping` ({theirs: ours}) overrides the usual names. A folder that maps to nothing,
    or two that map to one split, are errors."""
    if not folder.is_dir():
        raise DatasetImportError(f"{folder}: no such folder")
    known = {alias: ours for ours, aliases in SPLIT_NAMES.items() for alias in aliases}
    found: dict[str, Path] = {}
    unknown = []
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix in TEXT_SUFFIXES)]
    for sub in sorted(entries):
        theirs = sub.name if sub.is_dir() else sub.stem
        ours = mapping.get(theirs) or known.get(theirs.lower())
        if ours is None and sub.is_file():
            continue  # a file that names no split (a README.csv, a label list): not the dataset's
        if ours is None:
            unknown.append(theirs)
        elif ours in found:
            raise DatasetImportError(f"{folder}: both {found[ours].name} and {sub.name} would be the {ours} split; "
                               f"map one elsewhere with --split {theirs}=SPLIT ({', '.join(SPLIT_NAMES)})")
        else:
            found[ours] = sub
    bad = sorted(set(mapping.values()) - set(SPLIT_NAMES))
    if bad:
        raise DatasetImportError(f"--split maps to {bad}: the splits are {', '.join(SPLIT_NAMES)}")
    if unknown:
        raise DatasetImportError(f"{folder}: sub-folder(s) {unknown} are no split the pipeline knows; name each with "
                           f"--split {unknown[0]}=train|unlabeled|test|val")
    return found


def import_dataset(
    name: str,
    target: Path,
    source: Path | None = None,
    splits: dict[str, str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Imported:
    """Copy `target` (and `source`) under the data root as the domains `name` (and `name`-source) and write
    `configs/<name>.yaml`; `overrides` (`section.key=value`) apply to that config. Returns what was made."""
    if not _NAME.match(name):
        raise DatasetImportError(f"--name '{name}': use letters, digits, '.', '_' and '-' (it names a folder and the registered model)")
    root = env.project_root()
    config_path = root / "configs" / f"{name}.yaml"
    source_name = f"{name}-source" if source is not None else None
    mapped = {name: map_splits(target, splits or {})} | ({source_name: map_splits(source, splits or {})} if source is not None else {})
    for domain, found in mapped.items():
        needs = ("train", "test")
        missing = [s for s in needs if s not in found]
        if missing:
            raise DatasetImportError(f"{target if domain == name else source}: no {' or '.join(missing)} split among "
                               f"{sorted(p.name for p in found.values()) or 'its sub-folders'}; a domain needs labeled train and test "
                               "images (map a folder with --split THEIRS=train)")
    text = any(is_text_split(p) for found in mapped.values() for p in found.values())
    config = _config(name, source_name, overrides, text)
    data_root = env.project_path(config.data.root)
    taken = [p for p in (config_path, *(data_root / d for d in mapped)) if p.exists()]
    if taken:
        raise DatasetImportError(f"{taken[0]} exists; choose another --name, or remove it first")
    data_root.mkdir(parents=True, exist_ok=True)
    imported = Imported(name, config_path, source=source_name, text=text)
    with tempfile.TemporaryDirectory(prefix=f".import-{name}-", dir=data_root) as tmp:
        staged = Path(tmp)
        for domain, found in mapped.items():
            imported.domains[domain] = {split: _copy_split(folder, staged / domain, split) for split, folder in found.items()}
        origins = {staged / domain / (f"{split}{theirs.suffix}" if theirs.is_file() else split): theirs
                   for domain, found in mapped.items() for split, theirs in found.items()}
        _validate(config, staged, origins)
        for domain in mapped:
            (staged / domain).rename(data_root / domain)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    dump_params(config, config_path, header=_header(name, target, source))
    return imported


def is_text_split(path: Path) -> bool:
    """A CSV or JSONL file, or a folder holding `.txt` files (directly or one folder down): a split of texts."""
    return path.suffix in TEXT_SUFFIXES if path.is_file() else any(path.glob(f"*{TEXT_FILE}")) or any(path.glob(f"*/*{TEXT_FILE}"))


def _config(name: str, source: str | None, overrides: list[str] | tuple[str, ...], text: bool = False) -> RunConfig:
    """The dataset's config: its domains, a registered model of its own, and linked paths that agree."""
    given = dict(item.partition("=")[::2] for item in overrides)
    settings = {"data.target": name, "data.source": source or "", "data.labeled_per_class": "", "registry.model_name": name,
                "finetune.strategy": "finetune", "pretrain.output": f"models/{name}-source"}
    if text:
        settings |= TEXT
        start = "package:minilm_l6"
    else:
        arch = given.get("finetune.arch", IMAGENET["arch"])
        settings |= {"data.image_size": "64", "finetune.arch": arch, "pretrain.arch": given.get("pretrain.arch", arch),
                     "finetune.epochs": "30", "finetune.backbone_lr_scale": "1.0"}
        start = IMAGENET["pretrained.uri"] if arch == IMAGENET["arch"] else "scratch" if arch == "small_cnn" else f"torchvision:{arch}"
    if source is None:
        settings |= {"pretrained.uri": start, "registry.guard_metric": ""}
    else:
        settings |= {"pretrained.uri": f"{given.get('pretrain.output', settings['pretrain.output'])}/model.pt"}
    return load_config(None, [f"{k}={v}" for k, v in settings.items()] + list(overrides))


def _copy_split(theirs: Path, domain: Path, split: str) -> int:
    """Copy one split into the staged domain under the pipeline's name for it: a text file as `<split>.csv|.jsonl`
    (its rows counted), a folder as `<split>/` (its images or text files counted)."""
    if theirs.is_file():
        dest = domain / f"{split}{theirs.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(theirs, dest)
        return len(read_rows(dest, Report(), labeled=split != "unlabeled"))  # its problems are reported by the check after the copy
    return _copy_images(theirs, domain / split)


def _copy_images(folder: Path, dest: Path) -> int:
    """Copy the images under `folder` to `dest`, keeping their folders (validation then checks the layout);
    a link is refused: the copy would hold what it points to, from wherever that is."""
    count = 0
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink():
            raise DatasetImportError(f"{path}: a link (to {path.resolve()}); copy the file itself there, or remove the link")
        if path.is_file() and (path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == TEXT_FILE):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / relative)
            count += 1
    return count


def _validate(config: RunConfig, staged: Path, origins: dict[Path, Path]) -> None:
    """Check the staged copy as the pipeline will read it (data only: no model exists yet); a problem names the
    user's own file or folder (`origins`: staged copy -> where it came from)."""
    from adaptflow.validate import validate

    staged_config = config.model_copy(update={"data": config.data.model_copy(update={"root": staged})})
    try:
        if config.task == "text_classification":
            validate(staged_config, "data")
        else:
            validate_images(staged_config)
    except DataValidationError as exc:
        message = str(exc)
        for copy in sorted(origins, key=lambda path: len(str(path)), reverse=True):  # the longest first: a folder's files before it
            message = message.replace(str(copy), str(origins[copy]))
        message = message.replace(str(staged), "(imported)").replace("nothing was trained or registered", "nothing was imported")
        raise DatasetImportError(message) from None


def _header(name: str, target: Path, source: Path | None) -> str:
    origin = f"{target}" + (f" (target) and {source} (source)" if source is not None else "")
    steps = ([f"adaptflow run pretrain -c configs/{name}.yaml"] if source is not None else []) + [f"adaptflow run transfer -c configs/{name}.yaml"]
    return (f"# Dataset {name}, imported from {origin} by `adaptflow data import`.\n"
            f"# Train and register it: {'; then '.join(steps)}\n"
            "# The whole resolved config (DVC tracks its keys); edit values here or override them on the command line.\n")

"""Weights inside a `.zip` / `.tar(.gz)` archive: extracted once (safely) by the archive's hash, and the model file
inside it used; `<uri>#<path inside>` names it when the archive holds several."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from adaptflow import env
from adaptflow.io import mask_secrets, staged_dir
from adaptflow.weights.common import FetchError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def from_archive(archive: Path, digest: str, member: str, uri: str) -> Path:
    """Extract a verified archive once (by its hash) and return the model file inside it.

    Members that would land outside the extraction folder (absolute paths, `..`, links pointing
    out, device files) are refused: the archive is rejected whole and nothing is kept.
    """
    folder = env.cache_dir() / "extracted" / digest
    with FileLock(str(folder) + ".lock"):
        if not folder.exists():
            with staged_dir(folder) as staging:
                safe_extract(archive, staging)
    if member:
        path = (folder / member).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise FetchError(f"{mask_secrets(uri)}: the archive has no file '{member}'")
        return path
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(MODEL_SUFFIXES))
    if len(found) != 1:
        names = [str(p.relative_to(folder)) for p in found]
        raise FetchError(f"{mask_secrets(uri)}: the archive holds {len(found)} model files {names[:5]}; name one as <uri>#<path inside>")
    return found[0]


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into `dest`, refusing any member that would escape it."""
    import tarfile
    import zipfile

    root = dest.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = (root / info.filename).resolve()
                if not target.is_relative_to(root) or (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise FetchError(f"{archive}: member '{info.filename}' would escape the extraction folder; archive refused")
            zf.extractall(root)
        return
    with tarfile.open(archive) as tf:
        for info in tf.getmembers():
            if info.name.startswith("/") or ".." in Path(info.name).parts:
                raise FetchError(f"{archive}: member '{info.name}' would escape the extraction folder; archive refused")
        try:
            tf.extractall(root, filter="data")
        except tarfile.FilterError as exc:
            raise FetchError(f"{archive}: member '{exc.tarinfo.name}' would escape the extraction folder ({type(exc).__name__}); archive refused") from None

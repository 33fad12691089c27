"""`models:/<name>@<alias>` or `models:/<name>/<version>`: a model version in the MLflow registry, downloaded once
into the cache (by name and version) and its adaptflow model file used."""

from __future__ import annotations

from filelock import FileLock

from adaptflow import env
from adaptflow.io import sha256_file, staged_dir
from adaptflow.weights.common import FetchError, PretrainedRef
from adaptflow.tracking.store import ULTRALYTICS_FILE


def check(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a `models:/` URI, or None."""
    spec = uri.removeprefix("models:/")
    ok = ("@" in spec and all(spec.split("@", 1))) or ("/" in spec and spec.rsplit("/", 1)[1].isdigit())
    return None if ok else (f"'{uri}': not a registry address", "write models:/<name>@<alias> or models:/<name>/<version>")


def fetch(uri: str, expected: str | None, tracking_uri: str | None, field: str) -> PretrainedRef:
    """The model file of the registered version `uri` names, from the store at `tracking_uri` (or the default one)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    spec = uri.removeprefix("models:/")
    tracking_uri = tracking_uri or env.default_tracking_uri()
    if store := env.store_not_made(tracking_uri):  # checked first: a client makes the store it opens
        raise FetchError(f"{field} '{uri}': nothing is registered at {tracking_uri} (no store at {store}); "
                         "register the model first, or set MLFLOW_TRACKING_URI to the store that holds it")
    client = MlflowClient(tracking_uri)
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, version = spec.rsplit("/", 1)
            client.get_model_version(name, version)
    except (MlflowException, ValueError) as exc:
        raise FetchError(f"{field} '{uri}': not in the registry at {client.tracking_uri} ({exc})") from None
    folder = env.cache_dir() / "registry" / name / str(version)
    with FileLock(str(folder) + ".lock"):
        if not folder.exists():
            import mlflow.artifacts

            with staged_dir(folder) as staging:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=client.get_model_version_download_uri(name, version), dst_path=str(staging), tracking_uri=client.tracking_uri
                )
    found = sorted(p for p in folder.rglob("artifacts/*.pt") if p.name != ULTRALYTICS_FILE)  # the same weights for Ultralytics
    if not found:
        raise FetchError(f"{uri}: version {version} holds no adaptflow model file (artifacts/*.pt)")
    path = found[0]
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise FetchError(f"{uri}: sha256 {actual} does not match pretrained.sha256 {expected}")
    return PretrainedRef(f"models:/{name}/{version}", str(path), actual)

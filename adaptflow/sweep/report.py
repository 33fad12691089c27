"""The sweep's result: the best trial by the selection metric, a markdown table of every trial,
and both attached to the sweep's MLflow run."""

from __future__ import annotations

from pathlib import Path

from adaptflow import env, tracking
from adaptflow.config import RunConfig, dump_params
from adaptflow.io import write_json
from adaptflow.metrics import rank
from adaptflow.sweep.plan import ON_TARGET_TEST, ON_TARGET_VAL, VALIDATORS, override_text, with_overrides

#: The best trial's whole config, beside the summary: what `adaptflow run transfer -c` trains again.
BEST_CONFIG = "best.yaml"


def pick_best(results: list[dict], metric: str) -> dict:
    """The finished trial with the highest `metric` (a tie goes to the lower validation loss, see
    `adaptflow.metrics.rank`, then to the first trial)."""
    done = [r for r in results if metric in r["metrics"]]
    if not done:
        errors = "; ".join(f"{r['name']}: {r.get('error', f'no {metric}')}" for r in results)
        raise RuntimeError(f"no trial finished with a {metric} score: {errors}")
    best = max(done, key=lambda r: (*rank(r["metrics"], metric), -r["index"]))
    return {"name": best["name"], "index": best["index"], "overrides": best["overrides"], "score": best["metrics"][metric],
            "metric": metric, "cli_overrides": [override_text(k, v) for k, v in best["overrides"].items()]}


def selection_note(metric: str) -> str:
    """How trustworthy a choice by `metric` is, in one sentence for the report."""
    if metric in VALIDATORS:
        return (f"Picked by the unsupervised validator `{metric}` on the target's unlabeled split: no target label, "
                "and not the target test set, took part in the choice, so the target test numbers below are fair estimates.")
    if metric in ON_TARGET_VAL:
        return (f"Picked by `{metric}` on labeled target images held out of training (data.val_fraction or the target's "
                "val folder): the target test set took no part in the choice, so the target test numbers below are fair estimates.")
    if metric in ON_TARGET_TEST:
        return (f"Picked by `{metric}`, measured on the target test set: the winner's test score is optimistic (it was "
                "chosen on it). Confirm it with a transfer run on data the sweep did not see.")
    return (f"Picked by `{metric}` on the source test set: it favours the trial that forgets least, not the one that "
            "adapts best; the target test numbers below took no part in the choice.")


def best_config(config: RunConfig, best: dict) -> RunConfig:
    """The sweep's base config with the best trial's values: the config its trial trained with."""
    return RunConfig.model_validate(with_overrides(config.model_dump(mode="json"), best["overrides"]))


def transfer_command(folder: Path) -> str:
    """The command that trains and registers the best trial's config (relative to the project when inside it)."""
    path = folder / BEST_CONFIG
    shown = path.relative_to(env.project_root()) if path.is_relative_to(env.project_root()) else path
    return f"adaptflow run transfer -c {shown}"


def summary_markdown(config: RunConfig, grid: dict, results: list[dict], best: dict, folder: Path) -> str:
    """The table of trials (grid values, selection score, test metrics, time) and the best overrides."""
    metric = best["metric"]
    suffix = "map50" if config.task == "detection" else "accuracy"
    columns = [metric, *dict.fromkeys(c for c in (f"target_{suffix}", f"source_{suffix}") if c != metric)]
    lines = [
        f"# Sweep: {config.task} {config.finetune.arch}, {config.data.source or config.pretrained.uri} -> {config.data.target}",
        "",
        f"{len(results)} trials over {', '.join(f'`{k}`' for k in grid)}. {selection_note(metric)}",
        "",
        "| trial | " + " | ".join(grid) + " | " + " | ".join(columns) + " | train s | |",
        "|---" * (len(grid) + len(columns) + 3) + "|",
    ]
    for r in sorted(results, key=lambda r: r["index"]):
        values = [override_text(k, v).split("=", 1)[1] for k, v in r["overrides"].items()]
        scores = [f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "" for c in columns]
        mark = "**best**" if r["name"] == best["name"] else f"failed: {r['error'][:80]}" if "error" in r else ""
        seconds = f"{r['train_seconds']:.1f}" if "train_seconds" in r else ""
        lines.append(f"| {r['name']} | " + " | ".join(values) + " | " + " | ".join(scores) + f" | {seconds} | {mark} |")
    lines += ["", f"Best: **{best['name']}** ({metric} {best['score']:.4f}): {' '.join(best['cli_overrides'])}. Train and register "
              f"it through the champion gate with its whole config (`{BEST_CONFIG}` in the sweep's run folder):",
              "", "```", transfer_command(folder), "```", ""]
    return "\n".join(lines)


def write_summary(folder: Path, markdown: str, results: list[dict], best: dict, config: RunConfig) -> dict[str, Path]:
    """`summary.md`, `trials.json` and the best trial's config (`best.yaml`) in the sweep's run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    dump_params(best_config(config, best), folder / BEST_CONFIG, f"# The best trial of this sweep, {best['name']}: {transfer_command(folder)}\n")
    (folder / "summary.md").write_text(markdown)
    write_json(folder / "trials.json", {"best": best, "trials": results})
    return {"summary": folder / "summary.md", "trials": folder / "trials.json", "best_config": folder / BEST_CONFIG}


def close_parent_run(config: RunConfig, run_id: str, paths: dict[str, Path], best: dict) -> None:
    """The summary and the trials on the sweep's run, the best score as its metric, the best overrides as a tag."""
    # best.yaml stays in the run folder: it is runnable, so its secrets (a tracking URI's password) are not masked.
    tracking.log_artifacts(config.tracking, run_id, [paths["summary"], paths["trials"]])
    tracking.log_metrics(config.tracking, run_id, {f"best_{best['metric']}": best["score"]})
    tracking.set_tags(config.tracking, run_id, {"best_trial": best["name"], "best_overrides": " ".join(best["cli_overrides"])})
    tracking.finish_run(config.tracking, run_id)

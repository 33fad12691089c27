"""One training loop for every classification strategy and adaptation method.

`fit` runs the phases of the settings' strategy (`adaptflow.training.strategies`), each a few epochs of
`train_one_epoch`, each epoch many `train_step`s (`adaptflow.training.step`). Adaptation methods (`adaptflow.adapt`) plug into the
same loop: hooks around epochs and a loss term over a batch of unlabeled target images. Batches come
from tensors kept on the device, or, for a set too large for it, copied there from pinned host memory
while the previous step computes (`adaptflow.data.feed`); normalisation and augmentation run on the
device, on the whole batch. The full training state is checkpointed atomically after every epoch
(`adaptflow.training.checkpoint`), so a retried run resumes exactly.

Inside torchrun workers (`adaptflow.launch`) the same loop is data-parallel: every worker draws the
same permutation and augmentation numbers, trains on its rows of each global batch under DDP, and
only rank 0 writes the checkpoint and reports epochs (`adaptflow.distributed.World`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from adaptflow.adapt import Adaptation, AdaptOptions, TargetData, build_methods
from adaptflow.config import TrainSettings
from adaptflow.data.feed import DeviceRows
from adaptflow.data.folders import ImageSet
from adaptflow.distributed import World
from adaptflow.metrics import rank
from adaptflow.models import Classifier
from adaptflow.training import runtime
from adaptflow.training.anchor import Anchor
from adaptflow.training.augment import Normalizer
from adaptflow.training.checkpoint import load_state, save_state
from adaptflow.training.step import train_step
from adaptflow.training.strategies import Phase, freeze_modes, layer_decay, make_optimizer, param_groups, phases

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
#: Scores the model after an epoch on the device it trains on (e.g. on a validation set); higher is better.
EpochScore = Callable[[nn.Module, torch.device], dict[str, float]]


@dataclass
class Run:
    """What the epochs of one `fit` call share: the model, where it trains, its data, the methods, and the kept record."""

    model: Classifier
    settings: TrainSettings
    world: World
    device: torch.device
    amp_dtype: torch.dtype | None
    generator: torch.Generator  # the same on every worker: same permutations, same draws
    normalize: Normalizer
    rows: DeviceRows
    adaptation: Adaptation | None
    anchor: Anchor | None
    scaler: torch.amp.GradScaler | None
    target_only: bool  # no labeled images: an epoch is a pass over the unlabeled target images
    n: int
    steps_per_epoch: int
    state_path: Path | None = None
    fingerprint: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # the kept epoch: its number, rank (`adaptflow.metrics.rank`) and weights (on the CPU)
    bar: tqdm | None = None
    #: The last finished epoch's order and its loss and correct-prediction sums over every worker, for its checkpoint.
    epoch_end: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def total_steps(self) -> int:
        return self.settings.epochs * self.steps_per_epoch

    def save(self, epoch: int, step: int, order: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor,
             optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Checkpoint (rank 0 only); `loss_sum` and `correct` are the sums over all workers so far."""
        worker_rngs = self.world.gather(torch.get_rng_state())  # a collective: every worker calls it, before rank 0 alone writes
        if self.state_path is None or not self.world.is_main:
            return
        save_state(self.state_path, {
            "fingerprint": self.fingerprint, "epoch": epoch, "step": step, "order": order.cpu(),
            "loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "worker_rngs": worker_rngs,
            "history": self.history, "adaptation": self.adaptation.state_dict() if self.adaptation is not None else {},
            "best": self.best, "anchor": self.anchor.state() if self.anchor is not None else [],
        })

    def resume(self, state: dict) -> tuple[int, int]:
        """Take the model, RNGs, history and methods' state a checkpoint saved; returns its (epoch, step)."""
        log.info("resuming from %s at epoch %d step %d", self.state_path, state["epoch"], state["step"])
        self.history, self.best = state["history"], state.get("best", {})
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["worker_rngs"][self.world.rank] if self.world.size > 1 else state["torch_rng"])
        if self.adaptation is not None:
            self.adaptation.load_state_dict(state["adaptation"])
        if self.anchor is not None:
            self.anchor.restore(state["anchor"])
        return state["epoch"], state["step"]


def fit(
    model: Classifier,
    train: ImageSet,
    settings: TrainSettings,
    *,
    state_path: Path | None = None,
    fingerprint: str = "",
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    unlabeled: ImageSet | None = None,
    score: EpochScore | None = None,
) -> list[dict[str, float]]:
    """Train `model` on `train` following the strategy in `settings`; returns per-epoch metrics.

    `settings.methods` name adaptation methods that also learn from `unlabeled` target images
    (their labels, when the split has them, serve only to measure pseudo-label accuracy).

    `score`, when given, scores the model after every epoch into that epoch's record. With
    `settings.keep_epoch` naming one of its scores, `model` ends with the weights of the epoch that
    scored highest on it instead of the last epoch's (a tie goes to the lower validation loss, see
    `adaptflow.metrics.rank`, then to the earlier epoch).

    With `state_path`, the full state (model, optimizer, scheduler, scaler, RNG, epoch and step) is
    saved there after every epoch and every `checkpoint_every_steps` steps, and a later call with
    the same `fingerprint` resumes from it exactly.

    In a torchrun worker (a process group is initialised) `settings.batch_size` is the global
    batch: each worker trains on its rows of it under DDP, the returned metrics cover all workers,
    and only rank 0 saves state and calls `on_epoch`.
    """
    run = _prepare(model, train, settings, unlabeled)
    plan = phases(settings, run.model)
    if run.steps_per_epoch == 0:  # no labeled images, and methods that only hook in (adabn): nothing trains
        run.adaptation.before_fit(run.model)
        run.adaptation.after_fit(run.model)
        return []
    _check_plan(run, plan, score)
    run.state_path, run.fingerprint = state_path, fingerprint
    state = load_state(state_path, fingerprint)
    start = run.resume(state) if state is not None else (0, 0)
    if state is None and run.adaptation is not None:
        run.adaptation.before_fit(run.model)
    run.bar = tqdm(total=run.total_steps, initial=start[0] * run.steps_per_epoch + start[1], unit="step", leave=False,
                   disable=not (progress and run.world.is_main) or None)
    end = 0
    for phase in plan:
        first, end = end, end + phase.epochs
        if end <= start[0]:
            continue  # finished before the resume point
        net, optimizer, scheduler = _phase_optimizer(run, phase, state if (first, 0) < start else None)
        for epoch in range(max(first, start[0]), end):
            resume_at = state if state is not None and (epoch, 0) < start else None  # the saved epoch's order and sums
            record = train_one_epoch(run, phase, net, optimizer, scheduler, epoch, resume_at)
            _end_epoch(run, epoch + 1, record, score, on_epoch, optimizer, scheduler)
    run.bar.close()
    return _finish(run)


def _prepare(model: Classifier, train: ImageSet, settings: TrainSettings, unlabeled: ImageSet | None) -> Run:
    """Device, mixed precision, seeds, the data on the device, the methods and the anchor: a Run ready for its epochs."""
    torch.set_flush_denormal(True)  # denormal floats slow CPU training several-fold
    world = World.current()
    problem = settings.methods_problem("finetune", world.size)
    if problem:
        raise ValueError(problem)
    device = world.device(runtime.resolve_device(settings.device))
    amp_dtype = runtime.autocast_dtype(device, settings.precision)
    runtime.seed_everything(settings.seed + world.rank)  # dropout's global generator: each worker masks its rows its own way
    generator = torch.Generator().manual_seed(settings.seed)
    model = world.sync_batch_norm(model, device)
    model.to(device, memory_format=runtime.MEMORY_FORMAT)
    normalize = Normalizer(device, settings.low_resolution)
    rows = DeviceRows([train.images, train.labels], device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    adaptation = _adaptation(settings, model, unlabeled, normalize, device, len(train.classes))
    anchor = Anchor(model, settings.l2sp) if settings.l2sp else None
    # Without labeled images (source-free adaptation) an epoch is a pass over the unlabeled target images,
    # and the head stays as the pretrained model had it: nothing labeled could correct a head that the
    # target-only losses move (SHOT's hypothesis transfer).
    target_only = len(rows) == 0
    if target_only and adaptation is None:
        raise ValueError("no labeled images to train on, and no adaptation method: give labeled images "
                         "(data.labeled_per_class), or adapt from unlabeled target images with finetune.methods (adabn, mcc, "
                         "self_training, shot)")
    n = len(adaptation.target) if target_only else len(rows)
    hooks_only = target_only and not adaptation.uses_target_batch
    return Run(model, settings, world, device, amp_dtype, generator, normalize, rows, adaptation, anchor, scaler, target_only, n,
               steps_per_epoch=0 if hooks_only else world.steps(n, settings.batch_size))


def _check_plan(run: Run, plan: list[Phase], score: EpochScore | None) -> None:
    if run.target_only and not all(phase.train_backbone for phase in plan):
        raise ValueError(f"finetune.strategy {run.settings.strategy} has head-only epochs, and without labeled images the head stays "
                         "as the pretrained model had it: use finetune, discriminative or surgical to adapt from target images alone")
    keep = run.settings.keep_epoch
    if keep != "last" and score is None:
        raise ValueError(f"keep_epoch {keep} needs the model scored after every epoch; nothing scores {keep} here")


def _phase_optimizer(run: Run, phase: Phase, state: dict | None) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The model as the phase trains it (under DDP, compiled), and a fresh optimizer and cosine schedule over what trains in
    it; with `state`, a checkpoint saved inside this phase, where they stood then."""
    s = run.settings
    groups = param_groups(run.model, s.lr, s.backbone_lr_scale, phase, layer_decay(s), train_head=not run.target_only)
    if run.adaptation is not None and any(True for _ in run.adaptation.parameters()):
        groups.append({"params": list(run.adaptation.parameters()), "lr": s.lr})  # e.g. DANN's discriminator
    optimizer = make_optimizer(s.optimizer, groups, s.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase.epochs * run.steps_per_epoch)
    net = run.world.wrap(run.model, run.device)  # after param_groups: DDP syncs what trains in this phase
    if s.compile:
        net = runtime.compiled(net, run.device)  # again each phase: what trains, and so the graph, changed
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if run.scaler is not None and state["scaler"]:
            run.scaler.load_state_dict(state["scaler"])
    return net, optimizer, scheduler


def train_one_epoch(
    run: Run, phase: Phase, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int, resume_at: dict | None = None,
) -> dict[str, float]:
    """Epoch `epoch` (from 0) of `phase`: a pass over the images in a fresh random order, or, `resume_at` a checkpoint
    saved inside it, the rest of the pass it saved. Returns the epoch's record (loss and accuracy over every worker)."""
    s, model, world, device, adaptation = run.settings, run.model, run.world, run.device, run.adaptation
    t0 = time.perf_counter()
    mid_epoch = resume_at is not None and resume_at["step"] > 0
    if adaptation is not None and not mid_epoch:  # a resumed epoch keeps the state it saved
        adaptation.before_epoch(model, epoch)
    model.train()
    freeze_modes(model, phase)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    if mid_epoch:
        order, first = resume_at["order"].to(run.rows.index_device), resume_at["step"]
        if world.is_main:  # the saved sums cover every worker: count them once
            loss_sum, correct = resume_at["loss_sum"].to(device), resume_at["correct"].to(device)
    else:
        order, first = torch.randperm(run.n, generator=run.generator).to(run.rows.index_device), 0
    for step in range(first, run.steps_per_epoch):
        start = step * s.batch_size
        batch = order[start : start + s.batch_size if step + 1 < run.steps_per_epoch else run.n]  # the global batch
        idx = batch[world.shard()]  # this worker's rows: all of them on one device
        x, y, target = _batch(run, idx, len(batch))
        done = (epoch * run.steps_per_epoch + step) / max(1, run.total_steps - 1)
        if adaptation is None:
            loss, logits = train_step(net, x, y, optimizer, run.scaler, run.amp_dtype, loss_scale=world.loss_scale(len(idx), len(batch)),
                                      anchor=run.anchor)
        else:
            loss, logits = train_step(model, x, y, optimizer, run.scaler, run.amp_dtype, adaptation, target, done, anchor=run.anchor)
        scheduler.step()
        loss_sum += loss * len(idx)  # with target_only, the target loss of the step's unlabeled images
        correct += (logits.argmax(1) == y).sum()
        run.bar.update()
        every = s.checkpoint_every_steps
        if every and (step + 1) % every == 0 and step + 1 < run.steps_per_epoch:
            run.save(epoch, step + 1, order, world.sum(loss_sum.clone()), world.sum(correct.clone()), optimizer, scheduler)
    world.sum(loss_sum)  # the epoch's totals over every worker
    world.sum(correct)
    seconds = time.perf_counter() - t0
    run.epoch_end = (order, loss_sum, correct)
    return {
        "epoch": epoch + 1,
        "train_loss": float(loss_sum) / run.n,
        **({} if run.target_only else {"train_accuracy": int(correct) / run.n}),
        "epoch_seconds": seconds,
        "images_per_second": run.n / (time.perf_counter() - t0),
        **(adaptation.metrics() if adaptation is not None else {}),
    }


def _batch(run: Run, idx: torch.Tensor, global_size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """This worker's images (normalised, augmented) and labels for rows `idx`, and the methods' target batch (or None)."""
    s, adaptation = run.settings, run.adaptation
    draws = run.normalize.draws(global_size, run.generator) if s.augment and not run.target_only else None
    if run.target_only:  # the batch is unlabeled target images; the labeled batch is empty
        images, y = (t[:0] for t in run.rows.take(idx[:0]))
        t_idx = idx.to(adaptation.target.rows.index_device)
    else:
        images, y = run.rows.take(idx)
    x = run.normalize(images, draws=draws[run.world.shard()] if draws is not None else None)
    if adaptation is None or not adaptation.uses_target_batch:
        return x, y, None
    if not run.target_only:
        size = s.target_batch_size or len(idx)
        t_idx = torch.randint(len(adaptation.target), (size,), generator=run.generator).to(adaptation.target.rows.index_device)
    x_target = run.normalize(adaptation.target.take(t_idx), run.generator if s.augment else None)
    return x, y, (x_target, t_idx.to(run.device, non_blocking=True))  # indices: for the methods' own per-image state


def _end_epoch(run: Run, epoch: int, record: dict[str, float], score: EpochScore | None, on_epoch: EpochCallback | None,
               optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Score the finished epoch (keeping it when it is the best), record it, checkpoint, log and report it."""
    if score is not None:
        record |= _scored(score, run.model, run.device, run.settings.keep_epoch, epoch, run.best)
    run.history.append(record)
    run.bar.set_postfix(loss=f"{record['train_loss']:.3f}", **({"acc": f"{record['train_accuracy']:.3f}"} if not run.target_only else {}))
    run.save(epoch, 0, *run.epoch_end, optimizer, scheduler)
    if run.world.is_main:
        log.info("%s", epoch_line(epoch, run.settings.epochs, record))
    if on_epoch is not None:
        on_epoch(epoch, record)


def _finish(run: Run) -> list[dict[str, float]]:
    """The kept epoch's weights (when not the last), the methods' last hook, and the model in eval mode."""
    if run.best:
        log.info("keeping epoch %d of %d: %s %.4f", run.best["epoch"], run.settings.epochs, run.settings.keep_epoch, run.best["rank"][0])
        run.model.load_state_dict(run.best["model"])
    if run.adaptation is not None:
        run.adaptation.after_fit(run.model)
    run.model.eval()
    return run.history


def epoch_line(epoch: int, epochs: int | None, record: dict[str, float]) -> str:
    """One finished epoch as a log line: `epoch 3/15: train_loss 0.412, train_accuracy 0.875, ...`."""
    of = f"/{epochs}" if epochs else ""
    return f"epoch {epoch}{of}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")


def _scored(score: EpochScore, model: nn.Module, device: torch.device, keep: str, epoch: int, best: dict) -> dict[str, float]:
    """The epoch's scores; when it beats the kept epoch on `keep`, it becomes the kept one (`best`, updated in place)."""
    scores = score(model, device)
    if keep == "last":
        return scores
    if keep not in scores:
        raise ValueError(f"keep_epoch {keep} is not among the epoch's scores {sorted(scores)}")
    key = list(rank(scores, keep))  # [the score, its tie-breaker]
    if not best or key > best["rank"]:
        best |= {"epoch": epoch, "rank": key, "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    return scores


def _adaptation(
    settings: TrainSettings, model: Classifier, unlabeled: ImageSet | None, normalize: Normalizer, device: torch.device, num_classes: int
) -> Adaptation | None:
    """The run's adaptation methods around the unlabeled target images, or None without methods."""
    if not settings.methods:
        return None
    if unlabeled is None or len(unlabeled) == 0:
        raise ValueError(
            f"adaptation methods {list(settings.methods)} learn from unlabeled target images, but none were given: "
            "add images to the target's unlabeled split, or set finetune.methods=[]"
        )
    options = AdaptOptions.of(settings, num_classes)
    target = TargetData(unlabeled.images, normalize, unlabeled.labels, device=device)
    adaptation = Adaptation(build_methods(settings.methods, options), target)
    adaptation.setup(model)
    return adaptation

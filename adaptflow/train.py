"""One training loop for every classification strategy and adaptation method.

A strategy is a list of phases (which parameters train, for how many epochs); the loop runs
them in turn with one optimizer step function. Adaptation methods (`adaptflow.adapt`) plug into
the same loop: hooks around epochs and a loss term over a batch of unlabeled target images. Batches
come from tensors kept on the device, or, for a set too large for it, copied there from pinned host
memory while the previous step computes (`adaptflow.data.feed`); normalisation and augmentation
run on the device, on the whole batch. The full training state is checkpointed atomically after
every epoch, so a retried run resumes exactly.

Inside torchrun workers (`adaptflow.launch`) the same loop is data-parallel: every worker draws the
same permutation and augmentation numbers, trains on its rows of each global batch under DDP, and
only rank 0 writes the checkpoint and reports epochs (`adaptflow.distributed.World`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adaptflow.adapt import Adaptation, AdaptOptions, TargetData, build_methods
from adaptflow.data.feed import DeviceRows
from adaptflow.data.folders import ImageSet
from adaptflow.distributed import World
from adaptflow.errors import ConfigError
from adaptflow.io import atomic_write, write_json
from adaptflow.metrics import rank
from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD, Classifier

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
#: Scores the model after an epoch on the device it trains on (e.g. on a validation set); higher is better.
EpochScore = Callable[[nn.Module, torch.device], dict[str, float]]


#: Strategies that give each backbone block `layer_lr_decay` times the learning rate of the block above.
LAYERWISE_STRATEGIES = ("discriminative", "gradual_unfreeze")


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs in which the head trains, and the backbone too when `train_backbone`:
    all of it, only its top `blocks` blocks, or, `from_input`, only its first `blocks` blocks."""

    epochs: int
    train_backbone: bool
    blocks: int | None = None
    from_input: bool = False

    def trained(self, blocks: list[nn.Module]) -> list[nn.Module]:
        """Those of the backbone's `blocks` (input to output) that train in this phase, when the backbone trains."""
        if self.blocks is None:
            return blocks
        return blocks[: self.blocks] if self.from_input else blocks[len(blocks) - self.blocks :]


@dataclass(frozen=True)
class FitSettings:
    """What the loop needs to know, independent of which stage calls it."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    augment: bool = False
    low_resolution: float = 0.0  # with augment: the share of images seen at a random lower resolution
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False  # the training step's model through torch.compile (`compiled`)
    strategy: str = "finetune"
    lp_epochs: int = 0
    backbone_lr_scale: float = 1.0
    checkpoint_every_steps: int = 0
    layer_lr_decay: float = 0.5  # used by LAYERWISE_STRATEGIES only
    unfreeze_epochs: int = 1
    surgical_blocks: int = 1
    methods: Sequence[str] = ()
    adapt_weight: float = 1.0
    pseudo_label_threshold: float = 0.9
    target_batch_size: int = 0  # unlabeled target images per step for the methods' losses; 0: as many as the labeled batch
    l2sp: float = 0.0  # weight of the pull toward the weights training starts from (`Anchor`); 0: none
    keep_epoch: str = "last"  # or a score of `fit`'s `score`: the epoch scoring highest is the one kept

    @classmethod
    def from_config(cls, cfg: object, **overrides: object) -> FitSettings:
        """Take every field this class has from a config section (TrainConfig and its kin)."""
        shared = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        return cls(**{**shared, **overrides})

    def phases(self, model: Classifier) -> list[Phase]:
        """The strategy's phases on `model`'s backbone (a ValueError when it cannot be planned there)."""
        return plan_phases(self.strategy, self.epochs, self.lp_epochs, len(backbone_blocks(model.backbone)), self.unfreeze_epochs,
                           self.surgical_blocks)


def plan_phases(
    strategy: str, epochs: int, lp_epochs: int = 0, num_blocks: int = 1, unfreeze_epochs: int = 1, surgical_blocks: int = 1
) -> list[Phase]:
    """Phases of a transfer strategy: `linear_probe`, `finetune`, `lp_ft` (probe, then fine-tune),
    `discriminative` (fine-tune, lower blocks slower), `gradual_unfreeze` (the head for
    `unfreeze_epochs`, then one more backbone block from the top every `unfreeze_epochs`) or
    `surgical` (the head and the backbone's first `surgical_blocks` blocks: those that see a
    shift in the input, such as a new camera, first; Lee et al., 2023)."""
    if strategy == "linear_probe":
        return [Phase(epochs, train_backbone=False)]
    if strategy in ("finetune", "discriminative"):
        return [Phase(epochs, train_backbone=True)]
    if strategy == "gradual_unfreeze":
        phases, done = [], 0
        for blocks in range(num_blocks):
            if done >= epochs:
                return phases
            length = min(unfreeze_epochs, epochs - done)
            phases.append(Phase(length, train_backbone=blocks > 0, blocks=blocks or None))
            done += length
        return [*phases, Phase(epochs - done, train_backbone=True)] if done < epochs else phases
    if strategy == "lp_ft":
        if not 0 < lp_epochs < epochs:
            raise ValueError(f"lp_ft needs 0 < finetune.lp_epochs < finetune.epochs (got {lp_epochs} and {epochs})")
        return [Phase(lp_epochs, train_backbone=False), Phase(epochs - lp_epochs, train_backbone=True)]
    if strategy == "surgical":
        if not 1 <= surgical_blocks <= num_blocks:
            raise ValueError(f"surgical trains the first finetune.surgical_blocks backbone blocks, but this backbone has {num_blocks} "
                             f"(got {surgical_blocks}): set it between 1 and {num_blocks}")
        return [Phase(epochs, train_backbone=True, blocks=surgical_blocks, from_input=True)]
    raise ValueError(f"unknown strategy '{strategy}': use linear_probe, finetune, lp_ft, discriminative, gradual_unfreeze or surgical")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was requested but CUDA is not available here; use device=auto or cpu")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The mixed-precision dtype for this device, or None for full precision."""
    if device.type != "cuda" or precision == "off":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block, then restored: whatever else runs in the
    process (a flow run in-process, the next test) keeps its own setting, and so its own float results."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` through torch.compile (TorchInductor), which generates C++ on a CPU: without a compiler it
    would fail at the first step, so that is checked first, with the fix in the message."""
    import os
    import shutil

    if device.type == "cpu" and shutil.which(os.environ.get("CXX", "c++")) is None:
        raise ConfigError("compile=true: torch.compile generates C++ for the CPU and no C++ compiler was found ($CXX or c++); "
                          "install one (e.g. apt-get install g++) or set compile=false")
    return torch.compile(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: The layout every model and batch takes, on every device: channels-last convolutions and pooling
#: are faster on CUDA (tensor cores) and on CPUs too (`make bench`: `small_cnn` trains 1.3x and
#: predicts 1.6x faster than in the default NCHW layout; torchvision models at 224 px train 1.1x to
#: 1.35x faster; resnets below 128 px are within 10% either way).
MEMORY_FORMAT = torch.channels_last


class Normalizer(nn.Module):
    """uint8 N x C x H x W -> float, scaled to [0, 1], optionally augmented, then mean/std, channels-last.

    Augmentation is a random affine and, with `low_resolution` > 0, that share of the images seen at
    a random lower resolution (`random_low_resolution`).
    """

    def __init__(self, device: torch.device, low_resolution: float = 0.0) -> None:
        super().__init__()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.low_resolution = low_resolution

    def draws(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The random numbers augmenting `n` images takes (uniform in [0, 1)): drawn once for a global
        batch, so that data-parallel workers can each apply their own rows."""
        return torch.rand(n, AFFINE_DRAWS + (LOW_RESOLUTION_DRAWS if self.low_resolution else 0), generator=generator)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None, draws: torch.Tensor | None = None) -> torch.Tensor:
        """Augment with numbers from `generator`, or with rows of `self.draws` drawn earlier. Token ids
        (int32: text, `adaptflow.text`) pass through as they are: the model embeds them itself."""
        if images.dtype == torch.int32:
            return images
        x = images.float().div_(255.0)
        if generator is not None or draws is not None:
            u = (draws if draws is not None else self.draws(len(x), generator)).to(x.device)
            if self.low_resolution:
                x = random_low_resolution(x, self.low_resolution, u[:, AFFINE_DRAWS:])
            x = random_affine(x, None, draws=u[:, :AFFINE_DRAWS])
        return ((x - self.mean) / self.std).contiguous(memory_format=MEMORY_FORMAT)


#: Random numbers per image: the affine's angle, scale and two shifts; the low resolution's whether and how low.
AFFINE_DRAWS, LOW_RESOLUTION_DRAWS = 4, 2
#: A low-resolution image is shown at one of this many sides, geometrically spaced from LOWEST_SIDE x its side up to it.
LOW_RESOLUTION_LEVELS = 8
LOWEST_SIDE = 0.25


def affine_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers `random_affine` uses for `n` images (n x 4, uniform in [0, 1))."""
    return torch.rand(n, AFFINE_DRAWS, generator=generator)


def random_low_resolution(x: torch.Tensor, fraction: float, draws: torch.Tensor) -> torch.Tensor:
    """A `fraction` of the images downsampled (antialiased) to a random lower side and scaled back up:
    the blur and lost detail of a lower-resolution or defocused camera. `draws` (n x 2, uniform in
    [0, 1)) pick the images and their sides among LOW_RESOLUTION_LEVELS, from LOWEST_SIDE of the side
    up to the full side (shown as it is); each side is one pair of resizes of all the images drawn for it."""
    h, w = x.shape[-2:]
    sides = torch.logspace(math.log10(LOWEST_SIDE), 0, LOW_RESOLUTION_LEVELS, device=draws.device).mul(h).round().long().clamp(1, h)
    side = sides[(draws[:, 1] * LOW_RESOLUTION_LEVELS).long().clamp(max=LOW_RESOLUTION_LEVELS - 1)]
    side[draws[:, 0] >= fraction] = h
    out = x.clone()
    for s in side.unique().tolist():
        if s == h:
            continue
        rows = (side == s).nonzero().squeeze(1).to(x.device)
        low = F.interpolate(x[rows], size=(s, max(1, round(s * w / h))), mode="bilinear", antialias=True, align_corners=False)
        out[rows] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return out


def random_affine(
    x: torch.Tensor, generator: torch.Generator | None, degrees: float = 15.0, scale: float = 0.1, shift: float = 0.1,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate, scale and shift every image of a batch by its own random amount, in one grid sample.

    `draws` (from `affine_draws`) replace the generator, so that data-parallel workers can draw
    for the whole global batch and each apply its own rows.
    """
    n = x.shape[0]
    u = (draws if draws is not None else affine_draws(n, generator)).to(x.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = 1 + (u[:, 1] * 2 - 1) * scale
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    tx, ty = (u[:, 2] * 2 - 1) * shift * 2, (u[:, 3] * 2 - 1) * shift * 2
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from input to output: its children that hold parameters, with plain
    `nn.Sequential` children (resnet's layerN, mobilenet's features) opened one level."""
    blocks: list[nn.Module] = []
    for child in backbone.children():
        parts = list(child.children()) if type(child) is nn.Sequential else [child]
        blocks += [m for m in parts if any(True for _ in m.parameters())]
    return blocks


def param_groups(
    model: Classifier, lr: float, backbone_lr_scale: float, phase: Phase, layer_decay: float = 1.0, train_head: bool = True
) -> list[dict]:
    """The head at `lr` (frozen unless `train_head`); the backbone at `lr * backbone_lr_scale`, or frozen.

    Only the backbone blocks `phase` trains get gradients; with `layer_decay` < 1 each block
    trains at `layer_decay` times the rate of the block above it (discriminative learning rates).
    """
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(train_head)
    groups = [{"params": list(model.head.parameters()), "lr": lr}] if train_head else []
    if not phase.train_backbone:
        return groups
    if phase.blocks is None and layer_decay == 1.0:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        return [*groups, {"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale}]
    trainable = phase.trained(backbone_blocks(model.backbone))
    for depth, block in enumerate(reversed(trainable)):
        params = list(block.parameters())
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": lr * backbone_lr_scale * layer_decay**depth})
    return groups


def freeze_modes(model: Classifier, phase: Phase) -> None:
    """Frozen parts keep their batch-norm statistics: put them in eval mode (the rest trains)."""
    if not phase.train_backbone:
        model.backbone.eval()
    elif phase.blocks is not None:
        blocks = backbone_blocks(model.backbone)
        trained = {id(block) for block in phase.trained(blocks)}
        for block in blocks:
            if id(block) not in trained:
                block.eval()


def make_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over `groups`. When every parameter is on a CUDA device the
    update runs as one fused kernel per step instead of a kernel per parameter tensor."""
    fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay, fused=fused)
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=fused)


class Anchor:
    """L2-SP (Li, Grandvalet and Davoine, 2018): `weight / 2 * ||w - w0||^2` over the parameters that
    train, where w0 are the weights training started from. Weight decay pulls a fine-tuned model toward
    zero, which forgets what the pretrained weights knew; this pulls it toward them, which matters most
    when a few labels would otherwise pull the whole backbone their way."""

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.weight = weight
        self.pairs = [(p, p.detach().clone()) for p in model.parameters()]

    def state(self) -> list[torch.Tensor]:
        return [start for _, start in self.pairs]

    def restore(self, starts: list[torch.Tensor]) -> None:
        """The starting weights a resumed run saved (the model it is handed again may start elsewhere)."""
        for (_, start), saved in zip(self.pairs, starts, strict=True):
            start.copy_(saved)

    def penalty(self) -> torch.Tensor:
        distance = [((p - start) ** 2).sum() for p, start in self.pairs if p.requires_grad]
        return 0.5 * self.weight * torch.stack(distance).sum() if distance else torch.zeros(())


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    amp_dtype: torch.dtype | None,
    adaptation: Adaptation | None = None,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: float = 0.0,
    loss_scale: float = 1.0,
    anchor: Anchor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the detached loss and logits (no host sync).

    With `adaptation`, the loss adds each method's term over the target batch `target`
    (images, their indices in the unlabeled set); with `anchor`, its pull toward the starting
    weights (in float32, outside autocast). `loss_scale` multiplies the loss before the
    backward pass only (a data-parallel worker's share of the global batch: `World.loss_scale`).
    """
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        if adaptation is None:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        else:
            x_target, index = target if target is not None else (None, None)
            loss, logits = adaptation.loss(model, x, y, x_target, index, progress)
    if anchor is not None:
        loss = loss + anchor.penalty()
    optimizer.zero_grad(set_to_none=True)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    if scaler is not None:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        scaled.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


def fit(
    model: Classifier,
    train: ImageSet,
    settings: FitSettings,
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
    torch.set_flush_denormal(True)  # denormal floats slow CPU training several-fold
    world = World.current()
    if world.size > 1 and settings.methods:
        raise ValueError(f"adaptation methods {list(settings.methods)} train on one device only; set finetune.devices=1 or finetune.methods=[]")
    device = world.device(resolve_device(settings.device))
    amp_dtype = autocast_dtype(device, settings.precision)
    seed_everything(settings.seed + world.rank)  # dropout's global generator: each worker masks its rows its own way
    generator = torch.Generator().manual_seed(settings.seed)  # the same on every worker: same permutations, same draws
    model = world.sync_batch_norm(model, device)
    model.to(device, memory_format=MEMORY_FORMAT)
    normalize = Normalizer(device, settings.low_resolution)
    rows = DeviceRows([train.images, train.labels], device)
    phases = settings.phases(model)
    layer_decay = settings.layer_lr_decay if settings.strategy in LAYERWISE_STRATEGIES else 1.0
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
    if target_only and not adaptation.uses_target_batch:  # hooks alone (adabn): nothing trains
        adaptation.before_fit(model)
        adaptation.after_fit(model)
        return []
    if target_only and not all(phase.train_backbone for phase in phases):
        raise ValueError(f"finetune.strategy {settings.strategy} has head-only epochs, and without labeled images the head stays "
                         "as the pretrained model had it: use finetune, discriminative or surgical to adapt from target images alone")
    n = len(adaptation.target) if target_only else len(rows)
    steps_per_epoch = world.steps(n, settings.batch_size)

    keep = None if settings.keep_epoch == "last" else settings.keep_epoch
    if keep is not None and score is None:
        raise ValueError(f"keep_epoch {keep} needs the model scored after every epoch; nothing scores {keep} here")
    history: list[dict[str, float]] = []
    best: dict = {}  # the kept epoch: its number, rank (`adaptflow.metrics.rank`) and weights (on the CPU)
    start_epoch, start_step = 0, 0
    resumed = _load_state(state_path, fingerprint)
    if resumed is not None:
        start_epoch, start_step, history, best = resumed["epoch"], resumed["step"], resumed["history"], resumed.get("best", {})
        log.info("resuming from %s at epoch %d step %d", state_path, start_epoch, start_step)
        model.load_state_dict(resumed["model"])
        generator.set_state(resumed["generator"])
        torch.set_rng_state(resumed["worker_rngs"][world.rank] if world.size > 1 else resumed["torch_rng"])
        if adaptation is not None:
            adaptation.load_state_dict(resumed["adaptation"])
        if anchor is not None:
            anchor.restore(resumed["anchor"])
    elif adaptation is not None:
        adaptation.before_fit(model)

    def save(epoch: int, step: int, order: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        """Checkpoint (rank 0 only); `loss_sum` and `correct` are the sums over all workers so far."""
        worker_rngs = world.gather(torch.get_rng_state())  # a collective: every worker calls it, before rank 0 alone writes
        if state_path is not None and world.is_main:
            _save_state(state_path, {
                "fingerprint": fingerprint, "epoch": epoch, "step": step, "order": order.cpu(),
                "loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "worker_rngs": worker_rngs, "history": history,
                "adaptation": adaptation.state_dict() if adaptation is not None else {}, "best": best,
                "anchor": anchor.state() if anchor is not None else [],
            })

    total = settings.epochs * steps_per_epoch
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch + start_step, disable=not (progress and world.is_main) or None,
               unit="step", leave=False)
    epoch = 0
    for phase in phases:
        phase_start, phase_end = epoch, epoch + phase.epochs
        epoch = phase_end
        if phase_end <= start_epoch:
            continue  # finished before the resume point
        groups = param_groups(model, settings.lr, settings.backbone_lr_scale, phase, layer_decay, train_head=not target_only)
        if adaptation is not None and any(True for _ in adaptation.parameters()):
            groups.append({"params": list(adaptation.parameters()), "lr": settings.lr})  # e.g. DANN's discriminator
        optimizer = make_optimizer(settings.optimizer, groups, settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase.epochs * steps_per_epoch)
        net = world.wrap(model, device)  # after param_groups: DDP syncs what trains in this phase
        if settings.compile:
            net = compiled(net, device)  # again each phase: what trains, and so the graph, changed
        if resumed is not None and (phase_start, 0) < (start_epoch, start_step):  # resuming inside this phase
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            if scaler is not None and resumed["scaler"]:
                scaler.load_state_dict(resumed["scaler"])
        epoch = max(phase_start, start_epoch)
        while epoch < phase_end:
            t0 = time.perf_counter()
            mid_epoch = resumed is not None and epoch == start_epoch and start_step > 0
            if adaptation is not None and not mid_epoch:  # a resumed epoch keeps the state it saved
                adaptation.before_epoch(model, epoch)
            model.train()
            freeze_modes(model, phase)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            if mid_epoch:
                order, first = resumed["order"].to(rows.index_device), start_step
                if world.is_main:  # the saved sums cover every worker: count them once
                    loss_sum, correct = resumed["loss_sum"].to(device), resumed["correct"].to(device)
            else:
                order, first = torch.randperm(n, generator=generator).to(rows.index_device), 0
            for step in range(first, steps_per_epoch):
                start = step * settings.batch_size
                batch = order[start : start + settings.batch_size if step + 1 < steps_per_epoch else n]  # the global batch
                draws = normalize.draws(len(batch), generator) if settings.augment and not target_only else None
                idx = batch[world.shard()]  # this worker's rows: all of them on one device
                target = None
                if target_only:  # the batch is unlabeled target images; the labeled batch is empty
                    images, y = (t[:0] for t in rows.take(idx[:0]))
                    t_idx = idx.to(adaptation.target.rows.index_device)
                else:
                    images, y = rows.take(idx)
                x = normalize(images, draws=draws[world.shard()] if draws is not None else None)
                if adaptation is not None and adaptation.uses_target_batch:
                    if not target_only:
                        size = settings.target_batch_size or len(idx)
                        t_idx = torch.randint(len(adaptation.target), (size,), generator=generator).to(adaptation.target.rows.index_device)
                    x_target = normalize(adaptation.target.take(t_idx), generator if settings.augment else None)
                    target = (x_target, t_idx.to(device, non_blocking=True))  # for the methods' own per-image state
                done = (epoch * steps_per_epoch + step) / max(1, total - 1)
                if adaptation is None:
                    loss, logits = train_step(net, x, y, optimizer, scaler, amp_dtype, loss_scale=world.loss_scale(len(idx), len(batch)),
                                              anchor=anchor)
                else:
                    loss, logits = train_step(model, x, y, optimizer, scaler, amp_dtype, adaptation, target, done, anchor=anchor)
                scheduler.step()
                loss_sum += loss * len(idx)  # with target_only, the target loss of the step's unlabeled images
                correct += (logits.argmax(1) == y).sum()
                bar.update()
                every = settings.checkpoint_every_steps
                if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                    save(epoch, step + 1, order, world.sum(loss_sum.clone()), world.sum(correct.clone()))
            epoch += 1
            world.sum(loss_sum)  # the epoch's totals over every worker
            world.sum(correct)
            record = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / n,
                **({} if target_only else {"train_accuracy": int(correct) / n}),
                "epoch_seconds": time.perf_counter() - t0,
                "images_per_second": n / (time.perf_counter() - t0),
                **(adaptation.metrics() if adaptation is not None else {}),
            }
            if score is not None:
                record |= _scored(score, model, device, keep, epoch, best)
            history.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", **({"acc": f"{record['train_accuracy']:.3f}"} if not target_only else {}))
            save(epoch, 0, order, loss_sum, correct)
            if world.is_main:
                log.info("%s", epoch_line(epoch, settings.epochs, record))
            if on_epoch is not None:
                on_epoch(epoch, record)
    bar.close()
    if best:
        log.info("keeping epoch %d of %d: %s %.4f", best["epoch"], settings.epochs, keep, best["rank"][0])
        model.load_state_dict(best["model"])
    if adaptation is not None:
        adaptation.after_fit(model)
    model.eval()
    return history


def epoch_line(epoch: int, epochs: int | None, record: dict[str, float]) -> str:
    """One finished epoch as a log line: `epoch 3/15: train_loss 0.412, train_accuracy 0.875, ...`."""
    of = f"/{epochs}" if epochs else ""
    return f"epoch {epoch}{of}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")


def _scored(score: EpochScore, model: nn.Module, device: torch.device, keep: str | None, epoch: int, best: dict) -> dict[str, float]:
    """The epoch's scores; when it beats the kept epoch on `keep`, it becomes the kept one (`best`, updated in place)."""
    scores = score(model, device)
    if keep is None:
        return scores
    if keep not in scores:
        raise ValueError(f"keep_epoch {keep} is not among the epoch's scores {sorted(scores)}")
    key = list(rank(scores, keep))  # [the score, its tie-breaker]
    if not best or key > best["rank"]:
        best |= {"epoch": epoch, "rank": key, "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    return scores


def _adaptation(
    settings: FitSettings, model: Classifier, unlabeled: ImageSet | None, normalize: Normalizer, device: torch.device, num_classes: int
) -> Adaptation | None:
    """The run's adaptation methods around the unlabeled target images, or None without methods."""
    if not settings.methods:
        return None
    if unlabeled is None or len(unlabeled) == 0:
        raise ValueError(
            f"adaptation methods {list(settings.methods)} learn from unlabeled target images, but none were given: "
            "add images to the target's unlabeled split, or set finetune.methods=[]"
        )
    options = AdaptOptions(settings.adapt_weight, settings.pseudo_label_threshold, num_classes)
    target = TargetData(unlabeled.images, normalize, unlabeled.labels, device=device)
    adaptation = Adaptation(build_methods(settings.methods, options), target)
    adaptation.setup(model)
    return adaptation


def _save_state(path: Path, state: dict) -> None:
    """Write the training state atomically, then a small `<name>.json` saying where training stands."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    write_json(path.with_suffix(".json"), {"epoch": state["epoch"], "step": state["step"]})


def _load_state(path: Path | None, fingerprint: str) -> dict | None:
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it belongs to another configuration", path)
        return None
    return state


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str = "auto") -> torch.Tensor:
    """Logits for uint8 images (N x 3 x H x W), computed in batches; returned on the CPU.

    The model moves to the device and layout before inference mode: parameters converted inside it
    would become inference tensors, which a later `fit` could not train."""
    return _inference(model, images, batch_size, device, with_features=False)[0]


def predict_with_features(model: Classifier, images: torch.Tensor, batch_size: int = 512, device: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the backbone's features) for uint8 images, in one pass; both on the CPU, in float32."""
    return _inference(model, images, batch_size, device, with_features=True)


def _inference(model: nn.Module, images: torch.Tensor, batch_size: int, device: str, with_features: bool) -> tuple[torch.Tensor, ...]:
    dev = resolve_device(device)
    model.to(dev, memory_format=MEMORY_FORMAT).eval()
    normalize = Normalizer(dev)
    amp_dtype = autocast_dtype(dev, "auto")
    logits, features = [], []
    with torch.inference_mode():
        for (batch,) in DeviceRows([images], dev).slices(batch_size):
            x = normalize(batch)
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if with_features:
                    f = model.features(x)
                    features.append(f.float())
                    logits.append(model.head(f).float())
                else:
                    logits.append(model(x).float())
    return torch.cat(logits).cpu(), *([torch.cat(features).cpu()] if with_features else [])

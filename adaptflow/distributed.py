"""Data parallelism as the training loop sees it: which worker this is, its share of each batch,
sums across workers, and the model wrapped so that gradients are averaged.

Without a process group (one device, the usual case) `World()` is a single worker that holds
everything and every helper is the identity, so `fit` keeps one code path for one device and
for many. Workers are started by `adaptflow.launch`, never by this module.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This worker's place among the data-parallel workers (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        """The world of the initialised process group, or a single worker when there is none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one worker that writes files and reports epochs."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """Each worker's own GPU (`cuda:LOCAL_RANK`); a CPU stays the CPU."""
        if self.size > 1 and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def steps(self, n: int, batch_size: int) -> int:
        """Optimizer steps per epoch over `n` images in global batches of `batch_size`.

        With several workers, a last batch too small to give every worker an image joins the
        batch before it (every image still trains once per epoch); otherwise the steps, and so
        the learning-rate schedule, are those of a single device.
        """
        if n < self.size:
            raise ValueError(f"{n} training images cannot be shared by {self.size} workers; train on fewer devices")
        steps = math.ceil(n / batch_size)
        if self.size > 1 and steps > 1 and 0 < n % batch_size < self.size:
            steps -= 1
        return steps

    def shard(self) -> slice:
        """This worker's rows of a global batch: every `size`-th from its rank, as `DistributedSampler` deals them."""
        return slice(self.rank, None, self.size)

    def loss_scale(self, mine: int, batch: int) -> float:
        """What this worker's mean loss is multiplied by before backward, so that DDP's average of
        the workers' gradients is the gradient of the mean loss over the whole global batch, also
        when the shards differ in size (1.0 when they are equal, and on one device)."""
        return mine * self.size / batch

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all workers, in place (a collective: every worker must call it)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value: object) -> list:
        """`value` from every worker, by rank (a collective); `[value]` on one device."""
        if self.size == 1:
            return [value]
        gathered: list = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def sync_batch_norm(self, model: nn.Module, device: torch.device) -> nn.Module:
        """On several GPUs, batch norm computes its statistics over the global batch (SyncBatchNorm),
        as one device would. PyTorch's SyncBatchNorm runs on GPUs only: on CPU workers each keeps
        per-worker statistics (and DDP copies rank 0's running statistics to the others)."""
        if self.size > 1 and device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model under DistributedDataParallel, which averages gradients across workers; the
        model itself on one device. Wrap again whenever the set of trainable parameters changes:
        DDP syncs only those that required gradients when it was built."""
        if self.size == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def launched_by_torchrun() -> bool:
    """Whether this process is a worker that torchrun started (so it must not start workers itself)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def devices_problem(section: str, device: str, devices: int) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when this machine lacks the device `device` names, or cannot
    host `devices` workers (too few GPUs); None when it can. What is wrong starts with the field."""
    if device.startswith("cuda"):
        visible = torch.cuda.device_count()
        index = int(device.partition(":")[2] or 0)
        if index >= visible:
            shown = f"shows {visible} CUDA device(s)" if visible else "has no CUDA device"
            other = f"cuda:0 to cuda:{visible - 1} (check CUDA_VISIBLE_DEVICES)" if visible else "cpu"
            return (f"{section}.device={device} but this machine {shown}",
                    f"set {section}.device=auto (a GPU where there is one, else the CPU) or {other}")
    if device == "mps" and not torch.backends.mps.is_available():
        return f"{section}.device=mps but this machine has no Apple GPU", f"set {section}.device=auto or cpu"
    if devices == 1:
        return None
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        visible = torch.cuda.device_count()
        if devices > visible:
            return (f"{section}.devices={devices} but this machine shows {visible} CUDA device(s)",
                    f"lower {section}.devices to {max(visible, 1)} (check CUDA_VISIBLE_DEVICES), or set {section}.device=cpu to test on CPU workers")
    return None

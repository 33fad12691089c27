"""Rows of a dataset, delivered on the training device without stalling it.

A set that fits in a share of the accelerator's free memory is copied there once and indexed
there. A larger one stays in host memory: each batch is gathered into one of two pinned buffers,
used in turn, and copied to the device on a side stream. The copy then overlaps the compute
already queued, and the host never waits for the device except to reuse a buffer whose copy
has not finished. On the CPU the rows are indexed where they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

#: The share of the accelerator's free memory a dataset may take to be kept there.
RESIDENT_SHARE = 0.25


def resident_budget(device: torch.device) -> float:
    """Bytes of data that may live on `device`: all of it on the CPU, a share of what is free on CUDA."""
    if device.type == "cpu":
        return float("inf")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free * RESIDENT_SHARE
    return float(2 << 30)


class DeviceRows:
    """Same-length tensors (images, labels...) whose rows `take` returns on `device`."""

    def __init__(self, tensors: Sequence[torch.Tensor], device: torch.device) -> None:
        self.device = device
        self.resident = sum(t.nbytes for t in tensors) < resident_budget(device)
        self.tensors = [t.to(device) for t in tensors] if self.resident else list(tensors)
        #: Where index tensors for `take` should live (build them there once, not per batch).
        self.index_device = device if self.resident else torch.device("cpu")
        self._stream = torch.cuda.Stream(device) if not self.resident and device.type == "cuda" else None
        self._buffers: list[list[torch.Tensor]] = [[], []]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def __len__(self) -> int:
        return len(self.tensors[0])

    def take(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The rows at `index` of every tensor, on the device."""
        if self.resident:
            index = index.to(self.device)
            return [t.index_select(0, index) for t in self.tensors]  # on the CPU, several times faster than t[index] for large rows
        index = index.cpu()
        if self._stream is None:
            return [t.index_select(0, index).to(self.device) for t in self.tensors]
        return self._pinned_copy(index)

    def slices(self, batch_size: int) -> Iterator[list[torch.Tensor]]:
        """Every row in order, `batch_size` at a time."""
        for start in range(0, len(self), batch_size):
            if self.resident:
                yield [t[start : start + batch_size] for t in self.tensors]
            else:
                yield self.take(torch.arange(start, min(start + batch_size, len(self))))

    def _pinned_copy(self, index: torch.Tensor) -> list[torch.Tensor]:
        slot, self._turn = self._turn % 2, self._turn + 1
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the copy that last read this buffer is done
        buffers = self._buffers[slot]
        if not buffers or len(buffers[0]) < len(index):
            buffers[:] = [torch.empty((len(index), *t.shape[1:]), dtype=t.dtype, pin_memory=True) for t in self.tensors]
        staged = [torch.index_select(t, 0, index, out=b[: len(index)]) for t, b in zip(self.tensors, buffers, strict=True)]
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            rows = [s.to(self.device, non_blocking=True) for s in staged]
            event = torch.cuda.Event()
            event.record(self._stream)
        self._copied[slot] = event
        compute.wait_stream(self._stream)  # the device waits for the copy; the host does not
        for r in rows:
            r.record_stream(compute)  # made on the side stream, used on the compute stream
        return rows

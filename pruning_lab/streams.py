"""Activation streams (N x T x H tensors) in memory, or in memory-mapped files when a run's
streams would exceed the budget `memory.activations_gb`.

A memory-mapped stream is an ordinary CPU tensor whose storage is a file in the run's cache, so
the engine updates it in place exactly as it would an in-memory one; results are identical.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


class StreamAllocator:
    def __init__(self, budget_gb: float, folder: Optional[Path], device: torch.device):
        self.budget = budget_gb * 2**30
        self.folder, self.device = folder, device
        self.mapped = False
        self.allocated = 0
        self._count = 0

    def plan(self, total_bytes: int) -> None:
        """Decide once, from the bytes all streams of the run will need, where they live."""
        self.mapped = total_bytes > self.budget
        where = f"memory-mapped files in {self.folder}" if self.mapped else f"memory ({self.device})"
        log.info("Activation streams: %.2f GiB in total (budget memory.activations_gb=%.2f) -> %s",
                 total_bytes / 2**30, self.budget / 2**30, where)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, name: str) -> torch.Tensor:
        nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        self.allocated += nbytes
        if not self.mapped or dtype not in _NUMPY:
            return torch.empty(shape, dtype=dtype, device=self.device if not self.mapped else "cpu")
        assert self.folder is not None, "memory-mapped streams need a folder"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.folder / f"{self._count:03d}-{name}.bin"
        array = np.memmap(path, dtype=_NUMPY[dtype], mode="w+", shape=shape)
        os.unlink(path)  # the mapping keeps the data; nothing is left behind if the run dies
        return torch.from_numpy(array)

    def like(self, t: torch.Tensor, name: str, copy: bool = False) -> torch.Tensor:
        out = self.empty(tuple(t.shape), t.dtype, name)
        if copy:
            out.copy_(t)
        return out

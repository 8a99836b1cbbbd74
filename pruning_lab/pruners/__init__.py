"""Pruners see one linear layer, its input statistics and the sparsity pattern, and return a
keep-mask (and, for SparseGPT, updated surviving weights). They know nothing of blocks or streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..patterns import SparsityPattern
from .magnitude import magnitude_mask
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_mask

# which input statistic each pruner needs from the engine's hooks
STATISTIC = {"magnitude": None, "wanda": "sqnorm", "sparsegpt": "hessian", "none": None}


@dataclass
class PruneResult:
    mask: torch.Tensor  # bool, True = kept
    weight: Optional[torch.Tensor] = None  # new weights (already masked), when the pruner updates them


def prune_layer(name: str, weight: torch.Tensor, stat: Optional[torch.Tensor], pattern: SparsityPattern,
                blocksize: int = 128, percdamp: float = 0.01) -> PruneResult:
    w = weight.detach().float()
    if name == "magnitude":
        return PruneResult(magnitude_mask(w, pattern))
    if name == "wanda":
        return PruneResult(wanda_mask(w, stat, pattern))
    if name == "sparsegpt":
        new_w, mask = sparsegpt_prune(w, stat, pattern, blocksize=blocksize, percdamp=percdamp)
        return PruneResult(mask, new_w)
    raise ValueError(f"unknown pruner {name!r}")

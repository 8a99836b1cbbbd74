"""Magnitude pruning: score |W|, ranked over the whole layer (per group under N:M)."""

import torch

from ..patterns import SparsityPattern


def magnitude_mask(weight: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    return pattern.mask(weight.abs(), per_row=False)

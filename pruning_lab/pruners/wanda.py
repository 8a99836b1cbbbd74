"""Wanda (Sun et al. 2023): score |W_ij| * ||x_j||_2, ranked within each output row."""

import torch

from ..patterns import SparsityPattern


def wanda_mask(weight: torch.Tensor, sqnorm: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """`sqnorm[j]` is the sum over calibration tokens of x_j^2 (its scale does not change a ranking)."""
    return pattern.mask(weight.abs() * sqnorm.float().sqrt().unsqueeze(0), per_row=True)

"""Sparsity patterns: turn importance scores into an exact binary mask (True = weight kept).

Counts are exact even when scores tie (the embedded model's 4-bit weights tie a lot): the lowest
scores are chosen by a stable sort of indices, never by a `<=` threshold, so exactly
floor(ratio * count) weights are pruned per layer or per row, and exactly N per group of M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError


def num_pruned(count: int, ratio: float) -> int:
    """floor(count * ratio), robust to binary rounding (0.7 * 10 is 7, not 6)."""
    return int(math.floor(count * ratio + 1e-9))


def _keep_mask(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Along `dim`, prune the k lowest scores (ties broken by position)."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(scores, dim=dim, stable=True).indices.narrow(dim, 0, k)
        mask.scatter_(dim, idx, False)
    return mask


@dataclass(frozen=True)
class SparsityPattern:
    kind: str = "unstructured"  # unstructured | nm
    ratio: float = 0.5
    n: int = 2
    m: int = 4

    @property
    def name(self) -> str:
        return "unstructured" if self.kind == "unstructured" else f"{self.n}:{self.m}"

    @property
    def target_ratio(self) -> float:
        return self.ratio if self.kind == "unstructured" else self.n / self.m

    def check_layer(self, name: str, in_features: int) -> None:
        if self.kind == "nm" and in_features % self.m:
            raise ConfigError(
                f"sparsity.m={self.m} does not divide the input size {in_features} of layer {name}; "
                f"choose an M that divides it or list the layer in sparsity.skip."
            )

    def mask(self, scores: torch.Tensor, per_row: bool) -> torch.Tensor:
        """Keep-mask for a [rows, cols] score matrix: N:M per group of M consecutive inputs of a
        row; unstructured per row (`per_row`, as Wanda) or over the whole layer."""
        rows, cols = scores.shape
        if self.kind == "nm":
            groups = scores.reshape(rows, cols // self.m, self.m)
            return _keep_mask(groups, self.n, dim=2).reshape(rows, cols)
        if per_row:
            return _keep_mask(scores, num_pruned(cols, self.ratio), dim=1)
        return _keep_mask(scores.reshape(1, -1), num_pruned(scores.numel(), self.ratio), dim=1).reshape(rows, cols)


def pattern_from_config(cfg) -> SparsityPattern:
    return SparsityPattern(cfg.pattern, float(cfg.ratio), int(cfg.n), int(cfg.m))

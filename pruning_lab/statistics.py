"""Input statistics of linear layers, collected with forward hooks during one pass over a block.

`sqnorm`: sum over tokens of x_j^2 per input feature (Wanda). `hessian`: X^T X (SparseGPT).
Layers that read the very same input tensor (q/k/v; gate/up) share one accumulator: the statistic
is computed once per distinct input, which is most of the cost of the statistics pass.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class InputStatistics:
    def __init__(self, linears: dict[str, nn.Linear], kind: str):
        if kind not in ("sqnorm", "hessian"):
            raise ValueError(kind)
        self.linears, self.kind = linears, kind
        self.acc: dict[str, torch.Tensor] = {}  # layer name -> accumulator (shared tensors possible)
        self.tokens: dict[str, int] = {}
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, accumulator) of this call

    def _update(self, acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1]).float()
        stat = (x * x).sum(0) if self.kind == "sqnorm" else x.T @ x
        return stat if acc is None else acc.add_(stat)

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            # identity, with the tensor kept alive until the block call ends, so a later input
            # cannot reuse a freed address and be mistaken for a shared one
            for seen, acc in self._seen:
                if seen is x:
                    self.acc[name] = acc
                    break
            else:
                acc = self._update(self.acc.get(name), x)
                self.acc[name] = acc
                self._seen.append((x, acc))
            self.tokens[name] = self.tokens.get(name, 0) + x.numel() // x.shape[-1]
        return hook

    def end_call(self) -> None:
        self._seen.clear()

    @contextlib.contextmanager
    def hooked(self) -> Iterator["InputStatistics"]:
        handles = [lin.register_forward_pre_hook(self._hook(name)) for name, lin in self.linears.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.end_call()

    def distinct_inputs(self) -> int:
        return len({id(t) for t in self.acc.values()})

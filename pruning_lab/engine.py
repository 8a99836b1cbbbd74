"""The sequential engine: prune a model block by block on calibration windows.

For block i, with X the sparse stream (inputs of block i produced by the already pruned blocks):
  1. statistics pass: run the block on X with hooks on its linear layers (skipped for magnitude);
  2. choose masks (and the SparseGPT weight update) layer by layer;
  3. propagation pass: the pruned block's outputs on X become the next X (in place);
  4. record the block's measured sparsity and time.
Reconstruction slots in between 2 and 3 (a unit's weights optimised with the masks frozen); the
dense stream, when a configuration needs it, is a second tensor advanced by the dense block in 3.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from . import blockwise
from .adapters import Adapter
from .patterns import SparsityPattern
from .pruners import STATISTIC, prune_layer
from .statistics import InputStatistics

log = logging.getLogger(__name__)


@dataclass
class BlockRecord:
    index: int
    sparsity: float  # measured zeros / weights over the block's pruned linears
    seconds: float
    layers: dict[str, float] = field(default_factory=dict)  # per pruned linear: measured sparsity
    skipped: list[str] = field(default_factory=list)
    recon_error: Optional[dict] = None

    def to_json(self) -> dict:
        return asdict(self)


def measured_sparsity(linears: dict[str, nn.Linear]) -> tuple[float, dict[str, float]]:
    zeros = total = 0
    per_layer = {}
    for name, lin in linears.items():
        z = int((lin.weight == 0).sum())
        per_layer[name] = z / lin.weight.numel()
        zeros, total = zeros + z, total + lin.weight.numel()
    return (zeros / total if total else 0.0), per_layer


def check_pattern_fits(model: nn.Module, adapter: Adapter, pattern: SparsityPattern, skip: list[str]) -> None:
    """Cheap shape checks (N:M divisibility) before any forward pass."""
    for i, block in enumerate(adapter.blocks(model)):
        for name, lin in adapter.prunable_linears(block, i, skip).items():
            pattern.check_layer(f"{adapter.block_name(i)}.{name}", lin.in_features)


class SequentialPruner:
    def __init__(self, model: nn.Module, adapter: Adapter, pattern: SparsityPattern, pruner: DictConfig,
                 skip: list[str], device: torch.device, offload: bool, batch_size: int,
                 on_block: Optional[Callable[[BlockRecord], None]] = None, progress: bool = True):
        self.model, self.adapter, self.pattern, self.pruner = model, adapter, pattern, pruner
        self.skip, self.device, self.offload, self.batch_size = list(skip), device, offload, batch_size
        self.blocks = adapter.blocks(model)
        self.runner = blockwise.BlockRunner(self.blocks, device, offload)
        self.on_block, self.progress = on_block, progress

    def run(self, input_ids: torch.Tensor) -> list[BlockRecord]:
        storage = torch.device("cpu") if self.offload else self.device
        inputs = blockwise.capture(self.model, self.blocks, input_ids, self.batch_size, self.device, storage)
        gb = inputs.hidden.numel() * inputs.hidden.element_size() / 2**30
        log.info("Sparse stream: %d windows x %d tokens x %d features (%.2f GiB) held on %s",
                 *inputs.hidden.shape, gb, storage)
        x = inputs.hidden
        records = []
        bar = tqdm(range(len(self.blocks)), desc=f"pruning ({self.pruner.name}, {self.pattern.name})",
                   unit="block", disable=not self.progress)
        for i in bar:
            record = self.prune_block(i, x, inputs.kwargs[i])
            records.append(record)
            bar.set_postfix(sparsity=f"{record.sparsity:.3f}")
            if self.on_block:
                self.on_block(record)
        return records

    def prune_block(self, i: int, x: torch.Tensor, kwargs: dict) -> BlockRecord:
        start = time.perf_counter()
        with self.runner.on_device(i) as block:
            kwargs = blockwise._move(kwargs, self.device)
            linears = self.adapter.prunable_linears(block, i, self.skip)
            skipped = sorted(set(self.adapter.all_linears(block)) - set(linears))
            stats = self.collect_statistics(block, linears, x, kwargs)
            for name, lin in linears.items():
                result = prune_layer(self.pruner.name, lin.weight, stats.get(name), self.pattern,
                                     blocksize=self.pruner.blocksize, percdamp=self.pruner.percdamp)
                new = result.weight if result.weight is not None else lin.weight.detach().float() * result.mask
                lin.weight.data.copy_(new.to(lin.weight.dtype))
                lin.weight.data[~result.mask] = 0  # exact zeros whatever the dtype round trip did
            blockwise.propagate(block, x, kwargs, self.batch_size, self.device, out=x)
            sparsity, per_layer = measured_sparsity(linears)
        return BlockRecord(i, sparsity, time.perf_counter() - start, per_layer, skipped)

    def collect_statistics(self, block: nn.Module, linears: dict[str, nn.Linear], x: torch.Tensor,
                           kwargs: dict) -> dict[str, torch.Tensor]:
        kind = STATISTIC[self.pruner.name]
        if kind is None:
            return {}
        stats = InputStatistics(linears, kind)
        with torch.no_grad(), stats.hooked():
            for sl in blockwise.batches(len(x), self.batch_size):
                blockwise.call_block(block, x[sl].to(self.device), kwargs)
                stats.end_call()
        return stats.acc

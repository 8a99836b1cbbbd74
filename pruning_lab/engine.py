"""The sequential engine: prune block by block, reconstruct with masks frozen, measure errors.

Units are single blocks, or windows of `w` consecutive blocks sliding by one (cross-block
reconstruction). For unit i, with the sparse stream X̂ at the input of block i:
  1. dense stream: the dense blocks of the unit advance the dense stream X up to position i + w
     (only when a global target or the reconstruction-error measurement needs it);
  2. prune every block of the unit not pruned yet, on its own sparse-stream input: statistics pass
     with hooks (skipped for magnitude) -> masks (and SparseGPT's OBS update);
  3. reconstruct the unit with the masks frozen (reconstruction.py): a layer at a time against the
     dense weights (LR), the block against its dense output on X̂ (BR, local) or against the dense
     stream (GP, global), or the window against the dense stream after its last block (CR);
  4. propagation: block i's outputs on X̂ become the next X̂ (in place), and the relative error
     against the dense stream is recorded for calibration and held-out windows.
Finished units are checkpointed (checkpoint.py), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from . import blockwise
from .adapters import Adapter
from .patterns import SparsityPattern
from .pruners import STATISTIC, prune_layer
from .reconstruction import UnitData, optimise
from .statistics import InputStatistics
from .streams import StreamAllocator

log = logging.getLogger(__name__)

MEASURED = ("calib", "held_out", "held_out_generated")  # window sets whose reconstruction error is recorded


@dataclass
class BlockRecord:
    index: int
    sparsity: float  # measured zeros / weights over the block's pruned linears
    seconds: float
    layers: dict[str, float] = field(default_factory=dict)  # per pruned linear: measured sparsity
    skipped: list[str] = field(default_factory=list)
    recon_error: Optional[dict] = None  # {"calib"|"held_out": {"before", "after", "mse_before", "mse_after"}}
    optimised: list[dict] = field(default_factory=list)  # one report per unit that trained this block

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


class ErrorSum:
    """Sums for the relative error sum((y - d)^2) / sum(d^2), a ratio of sums, and the raw MSE."""

    def __init__(self):
        self.sq_err = self.sq_ref = 0.0
        self.count = 0

    def add(self, y: torch.Tensor, d: torch.Tensor) -> None:
        y, d = y.float(), d.float().to(y.device)
        self.sq_err += (y - d).pow(2).sum().item()
        self.sq_ref += d.pow(2).sum().item()
        self.count += d.numel()

    def value(self) -> tuple[float, float]:
        return self.sq_err / max(self.sq_ref, 1e-30), self.sq_err / max(self.count, 1)


@dataclass
class EngineOptions:
    recon: Optional[DictConfig] = None  # the `reconstruction` config; None or granularity none: prune only
    measure_error: bool = False  # reconstruction error per block (needs the dense stream)
    seed: int = 0


class SequentialPruner:
    def __init__(self, model: nn.Module, adapter: Adapter, pattern: SparsityPattern, pruner: DictConfig,
                 skip: list[str], device: torch.device, offload: bool, batch_size: int,
                 on_block: Optional[Callable[[BlockRecord], None]] = None, progress: bool = True,
                 options: Optional[EngineOptions] = None, streams: Optional[StreamAllocator] = None,
                 checkpointer: Any = None):
        self.model, self.adapter, self.pattern, self.pruner = model, adapter, pattern, pruner
        self.skip, self.device, self.offload, self.batch_size = list(skip), device, offload, batch_size
        self.blocks = adapter.blocks(model)
        self.runner = blockwise.BlockRunner(self.blocks, device, offload)
        self.on_block, self.progress = on_block, progress
        self.opt = options or EngineOptions()
        self.recon = self.opt.recon
        self.granularity = self.recon.granularity if self.recon is not None else "none"
        self.window = int(self.recon.window) if self.granularity == "window" else 1
        self.global_target = self.recon is not None and self.recon.target == "global" and self.granularity != "none"
        self.need_dense = self.opt.measure_error or self.global_target
        self.storage = torch.device("cpu") if offload else device
        self.alloc = streams or StreamAllocator(float("inf"), None, self.storage)
        self.checkpointer = checkpointer
        self.masks: dict[int, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ driver

    def run(self, calib_ids: torch.Tensor, held_ids: Optional[torch.Tensor] = None,
            val_ids: Optional[torch.Tensor] = None, held_generated_ids: Optional[torch.Tensor] = None,
            stats_count: Optional[int] = None) -> list[BlockRecord]:
        """`stats_count`: the pruner's statistics come from the first windows only (mixed calibration
        sets: the real part); reconstruction always uses every calibration window."""
        L = len(self.blocks)
        self.stats_count = len(calib_ids) if stats_count is None else int(stats_count)
        if self.window > L:
            from .errors import ConfigError

            raise ConfigError(f"reconstruction.window={self.window} is larger than the model's {L} blocks.")
        ids = {"calib": calib_ids}
        if self.opt.measure_error and held_ids is not None and len(held_ids):
            ids["held_out"] = held_ids
        if self.opt.measure_error and held_generated_ids is not None and len(held_generated_ids):
            ids["held_out_generated"] = held_generated_ids
        if self.recon is not None and self.recon.early_stop and val_ids is not None and len(val_ids) and self.granularity in ("block", "window"):
            ids["val"] = val_ids
        self._plan_memory(ids)
        state = self.checkpointer.load() if self.checkpointer is not None else None
        cap = blockwise.capture(self.model, self.blocks, calib_ids[:1], 1, self.device, self.storage)
        self.kwargs = cap.kwargs  # batch of one: broadcasts over any batch of any window set
        if state is not None:
            start_unit = self._restore(state)
            log.info("Resuming at unit %d of %d from %s", start_unit, L - self.window + 1, self.checkpointer.folder)
        else:
            start_unit = 0
            self.records, self.pruned, self.finished = {}, set(), []
            self.S, self.D = {}, {}
            for name, x in ids.items():
                hidden = blockwise.capture(self.model, self.blocks, x, self.batch_size, self.device, self.storage).hidden
                self.S[name] = self.alloc.like(hidden, f"sparse-{name}", copy=True)
                needs_dense = self.global_target if name == "val" else self.need_dense
                if needs_dense:
                    self.D[name] = {0: self.alloc.like(hidden, f"dense-{name}-0", copy=True)}
                del hidden
        n_units = L - self.window + 1
        desc = f"pruning ({self.pruner.name}, {self.pattern.name}" + (f", {self.recon.name})" if self.granularity != "none" else ")")
        bar = tqdm(range(start_unit, n_units), desc=desc, unit="block" if self.window == 1 else "window",
                   disable=not self.progress, initial=start_unit, total=n_units)
        for i in bar:
            self.run_unit(i, last=(i == n_units - 1))
            rec = self.records[i]
            err = (rec.recon_error or {}).get("calib", {}).get("after")
            bar.set_postfix(sparsity=f"{rec.sparsity:.3f}", **({"error": f"{err:.4f}"} if err is not None else {}))
            if self.checkpointer is not None:
                self.checkpointer.save(self._state(i + 1))
        return [self.records[j] for j in self.finished]

    def _plan_memory(self, ids: dict[str, torch.Tensor]) -> None:
        hidden = self.model.config.hidden_size
        elt = next(self.model.parameters()).element_size()
        per = {name: x.shape[0] * x.shape[1] * hidden * elt for name, x in ids.items()}
        dense_copies = (self.window + 1) if self.need_dense else 0
        total = sum(per.values()) * (1 + dense_copies + (1 if self.window > 1 else 0))
        if self.granularity == "block" and not self.global_target:
            total += per["calib"] + per.get("val", 0)  # local targets
        self.alloc.plan(total)

    def finished_records(self) -> list[BlockRecord]:
        return [self.records[j] for j in self.finished]

    # ------------------------------------------------------------------ one unit

    def run_unit(self, i: int, last: bool) -> None:
        start = time.perf_counter()
        unit_blocks = list(range(i, i + self.window))
        with contextlib.ExitStack() as stack:
            blocks = {j: stack.enter_context(self.runner.on_device(j)) for j in unit_blocks}
            kwargs = {j: blockwise.to_device(self.kwargs[j], self.device) for j in unit_blocks}
            # 1. the dense stream reaches the end of the unit (blocks not pruned yet are dense)
            for j in unit_blocks:
                for name, positions in self.D.items():
                    if j + 1 not in positions:
                        assert j not in self.pruned
                        positions[j + 1] = self.alloc.like(positions[j], f"dense-{name}-{j + 1}")
                        blockwise.propagate(blocks[j], positions[j], kwargs[j], self.batch_size, self.device, out=positions[j + 1])
            # 2. prune the unit's new blocks on their sparse-stream inputs
            x = dict(self.S)
            local_target = None
            for j in unit_blocks:
                if j > i:
                    x = {name: blockwise.propagate(blocks[j - 1], t, kwargs[j - 1], self.batch_size, self.device,
                                                   out=self.alloc.like(t, f"window-{name}")) for name, t in x.items()}
                if j in self.pruned:
                    continue
                if self.granularity == "block" and not self.global_target:
                    local_target = {name: blockwise.propagate(blocks[j], x[name], kwargs[j], self.batch_size, self.device,
                                                              out=self.alloc.like(x[name], f"target-{name}"))
                                    for name in x if name in ("calib", "val")}
                layer_inputs = self._layer_inputs(blocks[j], j, x["calib"], kwargs[j]) if self.granularity == "layer" else None
                dense_linears = {n: (lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone())
                                 for n, lin in self.adapter.prunable_linears(blocks[j], j, self.skip).items()} if layer_inputs else None
                self._prune_block(blocks[j], j, x["calib"][: self.stats_count], kwargs[j])
                if self.opt.measure_error and self.granularity != "none":
                    self._measure(j, blocks[j], x, kwargs[j], "before")
                if layer_inputs is not None:
                    self._reconstruct_layers(blocks[j], j, layer_inputs, dense_linears)
                    del layer_inputs
            # 3. reconstruct the block or window with masks frozen
            if self.granularity in ("block", "window"):
                self._reconstruct_unit(i, [blocks[j] for j in unit_blocks], [kwargs[j] for j in unit_blocks], local_target)
            del x, local_target
            # 4. propagate block i (and, after the last unit, the remaining blocks) and record errors
            for j in (unit_blocks if last else [i]):
                self._advance(j, blocks[j], kwargs[j])
                if j == i:  # a unit's time is booked on its first block
                    self.records[j].seconds += time.perf_counter() - start
                self.finished.append(j)
                if self.on_block:
                    self.on_block(self.records[j])
            for positions in self.D.values():
                for p in [p for p in positions if p <= i]:
                    del positions[p]

    def _prune_block(self, block: nn.Module, j: int, x: torch.Tensor, kwargs: dict) -> None:
        linears = self.adapter.prunable_linears(block, j, self.skip)
        skipped = sorted(set(self.adapter.all_linears(block)) - set(linears))
        stats = self.collect_statistics(block, linears, x, kwargs)
        self.masks[j] = {}
        for name, lin in linears.items():
            result = prune_layer(self.pruner.name, lin.weight, stats.get(name), self.pattern,
                                 blocksize=self.pruner.blocksize, percdamp=self.pruner.percdamp)
            new = result.weight if result.weight is not None else lin.weight.detach().float() * result.mask
            lin.weight.data.copy_(new.to(lin.weight.dtype))
            lin.weight.data[~result.mask] = 0  # exact zeros whatever the dtype round trip did
            self.masks[j][name] = result.mask.to(lin.weight.device)
        self.pruned.add(j)
        self.records[j] = BlockRecord(j, 0.0, 0.0, {}, skipped)

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

    def _advance(self, j: int, block: nn.Module, kwargs: dict) -> None:
        """Sparse streams move past block j; the after-error compares them with the dense stream."""
        errors = {}
        for name, x in self.S.items():
            dense = self.D[name].get(j + 1) if name in self.D else None
            acc = self._block_pass(block, x, kwargs, dense, out=x)
            if acc is not None and name != "val":
                errors[name] = acc.value()
        rec = self.records[j]
        rec.sparsity, rec.layers = measured_sparsity(self.adapter.prunable_linears(block, j, self.skip))
        if self.opt.measure_error and errors:
            rec.recon_error = rec.recon_error or {}
            for name, (rel, mse) in errors.items():
                entry = rec.recon_error.setdefault(name, {})
                entry["after"], entry["mse_after"] = rel, mse
                if self.granularity == "none":  # nothing changed the block since the pruner
                    entry["before"], entry["mse_before"] = rel, mse

    def _block_pass(self, block: nn.Module, x: torch.Tensor, kwargs: dict, dense: Optional[torch.Tensor],
                    out: Optional[torch.Tensor] = None) -> Optional[ErrorSum]:
        """Run `block` on every window of `x`; accumulate the error against `dense` (if given) and
        write the outputs into `out` (may be `x` itself) when asked."""
        acc = ErrorSum() if dense is not None else None
        with torch.no_grad():
            for sl in blockwise.batches(len(x), self.batch_size):
                y = blockwise.call_block(block, x[sl].to(self.device), kwargs)
                if acc is not None:
                    acc.add(y, dense[sl])
                if out is not None:
                    out[sl] = y.to(out.device)
        return acc

    def _measure(self, j: int, block: nn.Module, x: dict[str, torch.Tensor], kwargs: dict, when: str) -> None:
        rec = self.records[j]
        rec.recon_error = rec.recon_error or {}
        for name in MEASURED:
            if name not in x or name not in self.D:
                continue
            acc = self._block_pass(block, x[name], kwargs, self.D[name][j + 1])
            rel, mse = acc.value()
            rec.recon_error.setdefault(name, {}).update({when: rel, f"mse_{when}": mse})

    # ------------------------------------------------------------------ reconstruction

    def _param_masks(self, blocks: list[nn.Module], indices: list[int]) -> dict[int, torch.Tensor]:
        masks = {}
        for block, j in zip(blocks, indices):
            for name, lin in self.adapter.prunable_linears(block, j, self.skip).items():
                masks[id(lin.weight)] = self.masks[j][name]
        return masks

    def _reconstruct_unit(self, i: int, blocks: list[nn.Module], kwargs: list[dict], local_target) -> None:
        unit = nn.ModuleList(blocks)
        indices = list(range(i, i + len(blocks)))
        end = i + len(blocks)

        def forward(src: torch.Tensor):
            def predict(b: torch.Tensor) -> torch.Tensor:
                h = src[b].to(self.device)
                for blk, kw in zip(blocks, kwargs):
                    h = blockwise.call_block(blk, h, kw)
                return h
            return predict

        def fetch(t: torch.Tensor):
            return lambda b: t[b].to(self.device)

        if self.global_target:
            tgt = {name: self.D[name][end] for name in ("calib", "val") if name in self.D}
        else:
            tgt = local_target
        data = UnitData(n=len(self.S["calib"]), predict=forward(self.S["calib"]), target=fetch(tgt["calib"]))
        if "val" in self.S and "val" in tgt:
            data.val_predict, data.val_target, data.n_val = forward(self.S["val"]), fetch(tgt["val"]), len(self.S["val"])
        what = f"blocks {i}-{end - 1}" if len(blocks) > 1 else f"block {i}"
        report = optimise(unit, self._param_masks(blocks, indices), data, self.recon, seed=self.opt.seed * 100003 + i,
                          device=self.device, desc=f"reconstructing {what}", progress=self.progress)
        for j in indices:
            self.records[j].optimised.append({"unit": i, **asdict(report)})

    def _layer_inputs(self, block: nn.Module, j: int, x: torch.Tensor, kwargs: dict) -> dict[str, torch.Tensor]:
        """Inputs of each prunable linear on the sparse stream (dense block), one tensor per
        distinct input: layers reading the same tensor share it."""
        linears = self.adapter.prunable_linears(block, j, self.skip)
        chunks: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
        shared: dict[str, str] = {}
        seen: list[tuple[torch.Tensor, str]] = []

        def hook(name):
            def f(module, args):
                for t, owner in seen:
                    if t is args[0]:
                        shared[name] = owner
                        return
                seen.append((args[0], name))
                chunks[name].append(args[0].detach().to(self.storage))
            return f

        handles = [lin.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
        try:
            with torch.no_grad():
                for sl in blockwise.batches(len(x), self.batch_size):
                    blockwise.call_block(block, x[sl].to(self.device), kwargs)
                    seen.clear()
        finally:
            for h in handles:
                h.remove()
        out = {n: torch.cat(c) for n, c in chunks.items() if c}
        for name, owner in shared.items():
            out[name] = out[owner]
        return out

    def _reconstruct_layers(self, block: nn.Module, j: int, inputs: dict[str, torch.Tensor], dense: dict) -> None:
        """LR: each linear against its dense weights on the same (sparse-stream) input."""
        for name, lin in self.adapter.prunable_linears(block, j, self.skip).items():
            x = inputs[name]
            w0, b0 = dense[name]

            def predict(b, lin=lin, x=x):
                return lin(x[b].to(self.device))

            def target(b, x=x, w0=w0, b0=b0):
                with torch.no_grad():
                    return F.linear(x[b].to(self.device), w0, b0)

            report = optimise(lin, {id(lin.weight): self.masks[j][name]}, UnitData(len(x), predict, target), self.recon,
                              seed=self.opt.seed * 100003 + j * 101 + len(name), device=self.device,
                              desc=f"reconstructing block {j} {name}", progress=self.progress)
            self.records[j].optimised.append({"unit": j, "layer": name, **asdict(report)})

    # ------------------------------------------------------------------ checkpoints

    def _state(self, next_unit: int) -> dict:
        """Everything a resumed run needs; final blocks' weights go to files of their own, once."""
        return {"next_unit": next_unit, "pruned": sorted(self.pruned), "finished": list(self.finished),
                "masks": self.masks, "S": self.S, "D": self.D,
                "records": {j: r.to_json() for j, r in self.records.items()},
                "pending_blocks": {j: self.blocks[j].state_dict() for j in sorted(self.pruned - set(self.finished))},
                "final_blocks": {j: self.blocks[j] for j in self.finished}}

    def _restore(self, state: dict) -> int:
        self.pruned, self.finished = set(state["pruned"]), list(state["finished"])
        self.masks = state["masks"]
        for j, sd in {**state["final_blocks"], **state["pending_blocks"]}.items():
            self.blocks[j].load_state_dict(sd)
        self.S = {n: self.alloc.like(t, f"sparse-{n}", copy=True) for n, t in state["S"].items()}
        self.D = {n: {p: self.alloc.like(t, f"dense-{n}-{p}", copy=True) for p, t in pos.items()} for n, pos in state["D"].items()}
        self.records = {j: BlockRecord(**r) for j, r in state["records"].items()}
        return int(state["next_unit"])

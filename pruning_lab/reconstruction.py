"""Reconstruction with masks frozen: one optimiser loop, configured.

LR, BR, BR+GP and BR+GP+CR differ only in the unit (a linear layer, a block, a window of blocks)
and the target (local: the dense weights on the sparse-stream input; global: the dense stream's
output). The engine builds the unit's inputs and targets; this module trains the unit's surviving
weights (plus norms and biases, as the reference does) to minimise the mean squared error.
Pruned weights are exactly zero before, during and after: their gradients are masked before
every step and the weights re-masked after it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SUPPORTED = {("none", "local"), ("none", "global"), ("layer", "local"), ("block", "local"), ("block", "global"),
             ("window", "global")}


@dataclass
class UnitData:
    """What one unit trains on: `predict(batch_index_tensor)` gives the unit's output for those
    calibration windows, `target(batch_index_tensor)` the matching target."""

    n: int
    predict: Callable[[torch.Tensor], torch.Tensor]
    target: Callable[[torch.Tensor], torch.Tensor]
    val_predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    val_target: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    n_val: int = 0


@dataclass
class UnitReport:
    epochs: int = 0
    steps: int = 0
    loss_first: Optional[float] = None
    loss_last: Optional[float] = None
    val_losses: list = field(default_factory=list)
    best_epoch: Optional[int] = None
    stopped_early: bool = False
    nonfinite: bool = False
    seconds: float = 0.0


def trainable_parameters(unit: nn.Module, masks: dict[int, torch.Tensor], trainable: list[str]) -> list[nn.Parameter]:
    """Linear weights (masked by `masks`, keyed by parameter id) always; norm weights and biases
    when listed in `reconstruction.trainable`."""
    params = []
    for module in unit.modules():
        for name, p in module.named_parameters(recurse=False):
            is_linear = isinstance(module, nn.Linear)
            if is_linear and name == "weight":
                params.append(p)
            elif name == "bias" and "biases" in trainable:
                params.append(p)
            elif not is_linear and "norms" in trainable:
                params.append(p)
    return params


def autocast(amp: str, device: torch.device):
    if amp in ("bf16", "fp16"):
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return torch.autocast(device_type=device.type, enabled=False)


def optimise(unit: nn.Module, masks: dict[int, torch.Tensor], data: UnitData, cfg, seed: int, device: torch.device,
             desc: str, progress: bool = True) -> UnitReport:
    """Train `unit` in place. `cfg` is the `reconstruction` config; batches are shuffled with a
    generator seeded by `seed` alone, so a resumed run draws exactly the same batches."""
    report = UnitReport()
    start = time.perf_counter()
    params = trainable_parameters(unit, masks, list(cfg.trainable))
    if cfg.epochs == 0 or not params:
        return report
    dtypes = {p: p.dtype for p in params}
    for p in params:  # fp32 master weights whatever the model's dtype
        p.data = p.data.float()
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(data.n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))  # linear decay to 0
    g = torch.Generator().manual_seed(seed)
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    best_state, best_val = None, math.inf
    bad_epochs = 0

    def val_loss() -> float:
        with torch.no_grad(), autocast(amp, device):
            tot = 0.0
            for b in torch.arange(data.n_val).split(cfg.batch_size):
                tot += F.mse_loss(data.val_predict(b).float(), data.val_target(b).float(), reduction="sum").item()
        return tot

    if cfg.early_stop and data.n_val:
        best_val, best_state = val_loss(), copy.deepcopy(unit.state_dict())
        report.val_losses.append(best_val)
    initial = None if best_state is not None else copy.deepcopy(unit.state_dict())
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=not progress)
    try:
        for epoch in range(cfg.epochs):
            order = torch.randperm(data.n, generator=g)
            for b in order.split(cfg.batch_size):
                with autocast(amp, device):
                    loss = F.mse_loss(data.predict(b).float(), data.target(b).float())
                if not torch.isfinite(loss):
                    report.nonfinite = True
                    log.warning("%s: loss became %s at step %d; restoring the best weights and moving on",
                                desc, loss.item(), report.steps)
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p in params:
                    m = masks.get(id(p))
                    if m is not None and p.grad is not None:
                        p.grad.mul_(m)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                with torch.no_grad():
                    for p in params:
                        m = masks.get(id(p))
                        if m is not None:
                            p.mul_(m)
                report.steps += 1
                value = loss.item()
                report.loss_first = value if report.loss_first is None else report.loss_first
                report.loss_last = value
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3e}")
            if report.nonfinite:
                break
            report.epochs = epoch + 1
            if cfg.early_stop and data.n_val:
                v = val_loss()
                report.val_losses.append(v)
                if v < best_val:
                    best_val, best_state, report.best_epoch, bad_epochs = v, copy.deepcopy(unit.state_dict()), epoch + 1, 0
                else:
                    bad_epochs += 1
                    if bad_epochs >= cfg.patience:
                        report.stopped_early = True
                        break
    finally:
        bar.close()
        restore = best_state if best_state is not None else (initial if report.nonfinite else None)
        if restore is not None:
            unit.load_state_dict(restore)
        for p in params:
            p.requires_grad_(False)
            p.data = p.data.to(dtypes[p])
            m = masks.get(id(p))
            if m is not None:
                p.data.mul_(m.to(p.dtype))
    report.seconds = time.perf_counter() - start
    return report

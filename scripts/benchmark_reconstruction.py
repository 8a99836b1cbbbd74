"""Optimiser time per unit and epoch, as a ratio to one plain forward+backward pass of the same
data through the same unit, both measured in this run (medians of --repeats). Units: a block
(BR/GP) and a window of two blocks (CR) of the default model, on its masks after SparseGPT 50%.
Writes docs/benchmark_reconstruction.md.

    python scripts/benchmark_reconstruction.py [--repeats 3] [calibration.num_samples=32 ...]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from _common import compose, report_header, write_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="docs/benchmark_reconstruction.md")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pruning_lab import blockwise
    from pruning_lab.adapters import adapter_for
    from pruning_lab.cache import resolve_cache_dir
    from pruning_lab.calibration import build_calibration
    from pruning_lab.models import load_model
    from pruning_lab.patterns import pattern_from_config
    from pruning_lab.pruners import prune_layer
    from pruning_lab.reconstruction import UnitData, optimise
    from pruning_lab.results import environment
    from pruning_lab.statistics import InputStatistics

    overrides = ["calibration.num_samples=32", "calibration.seq_len=256", "reconstruction=br", *args.overrides]
    cfg = compose(overrides)
    cpu = torch.device("cpu")
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    loaded = load_model(cfg.model, cache_dir, cpu)
    model, adapter = loaded.model, adapter_for(loaded.model)
    blocks = adapter.blocks(model)
    ids = build_calibration(cfg, loaded.tokenizer, cache_dir).windows
    cap = blockwise.capture(model, blocks, ids, 8, cpu, cpu)
    kw = blockwise.capture(model, blocks, ids[:1], 1, cpu, cpu).kwargs
    x = cap.hidden
    # dense targets of blocks 0 and 1, then SparseGPT masks on them (what a real unit trains on)
    targets = [blockwise.propagate(blocks[0], x, kw[0], 8, cpu)]
    targets.append(blockwise.propagate(blocks[1], targets[0], kw[1], 8, cpu))
    masks = {}
    h = x
    for j in (0, 1):
        linears = adapter.prunable_linears(blocks[j], j)
        stats = InputStatistics(linears, "hessian")
        with torch.no_grad(), stats.hooked():
            for sl in blockwise.batches(len(h), 8):
                blockwise.call_block(blocks[j], h[sl], kw[j])
                stats.end_call()
        for name, lin in linears.items():
            r = prune_layer("sparsegpt", lin.weight, stats.acc[name], pattern_from_config(cfg.sparsity))
            lin.weight.data.copy_(r.weight)
            masks[id(lin.weight)] = r.mask
        h = blockwise.propagate(blocks[j], h, kw[j], 8, cpu)

    rcfg = OmegaConf.merge(cfg.reconstruction, {"epochs": 1})
    rows = []
    for label, unit_blocks, target in (("block (BR / GP)", [0], targets[0]), ("window of 2 (CR)", [0, 1], targets[1])):
        unit = torch.nn.ModuleList([blocks[j] for j in unit_blocks])

        def predict(b, unit_blocks=unit_blocks):
            out = x[b]
            for j in unit_blocks:
                out = blockwise.call_block(blocks[j], out, kw[j])
            return out

        def plain_pass(unit=unit, predict=predict, target=target) -> float:
            """The floor: forward + backward of every batch, nothing else."""
            for p in unit.parameters():
                p.requires_grad_(True)
            t = time.perf_counter()
            for b in torch.arange(len(x)).split(rcfg.batch_size):
                F.mse_loss(predict(b), target[b]).backward()
            elapsed = time.perf_counter() - t
            for p in unit.parameters():
                p.requires_grad_(False)
                p.grad = None
            return elapsed

        def optimiser_epoch(unit=unit, predict=predict, target=target, label=label) -> float:
            snapshot = copy.deepcopy(unit.state_dict())
            data = UnitData(len(x), predict, lambda b, target=target: target[b])
            report = optimise(unit, masks, data, rcfg, seed=0, device=cpu, desc=label, progress=False)
            unit.load_state_dict(snapshot)
            return report.seconds

        plain_pass()  # warm-up
        base = statistics.median(plain_pass() for _ in range(args.repeats))
        opt = statistics.median(optimiser_epoch() for _ in range(args.repeats))
        rows.append((label, base, opt))
        print(f"{label}: forward+backward {base:.2f} s, optimiser epoch {opt:.2f} s -> {opt / base:.2f}x", flush=True)

    env = environment(cpu)
    lines = [
        *report_header("Reconstruction speed", f"Default model after SparseGPT 50%, {len(x)} calibration windows x "
                       f"{x.shape[1]} tokens, batch {rcfg.batch_size}", env,
                       f"python scripts/benchmark_reconstruction.py --repeats {args.repeats} {' '.join(args.overrides)}"),
        "Baseline: one forward + backward pass of all windows through the unit (MSE loss, no optimiser).",
        "Optimiser epoch: `reconstruction.optimise` for one epoch (AdamW, schedule, clipping, masked",
        "gradients and weights, norms and biases trained). Medians of the repeats.",
        "",
        "| unit | forward+backward (s) | optimiser epoch (s) | ratio |",
        "|---|---|---|---|",
        *[f"| {label} | {b:.2f} | {o:.2f} | {o / b:.2f}x |" for label, b, o in rows],
    ]
    write_page(args.out, lines)


if __name__ == "__main__":
    main()

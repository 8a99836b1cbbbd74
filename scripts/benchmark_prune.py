"""Pruning time of the default model per pruner, as a ratio to one dense forward of the same
calibration set (full model, inference_mode, same batch size, dtype and threads), both measured in
this run; medians of --repeats. Writes docs/benchmark.md.

    python scripts/benchmark_prune.py [--repeats 3] [--pruners magnitude wanda sparsegpt]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import torch

from _common import compose, report_header, write_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pruners", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--out", default="docs/benchmark.md")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. calibration.num_samples=32")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pruning_lab.adapters import adapter_for
    from pruning_lab.blockwise import batches
    from pruning_lab.cache import resolve_cache_dir
    from pruning_lab.calibration import build_calibration
    from pruning_lab.engine import SequentialPruner
    from pruning_lab.models import load_model, resolve_device
    from pruning_lab.patterns import pattern_from_config
    from pruning_lab.results import environment

    cfg = compose(args.overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    device = resolve_device(cfg.model.device)
    loaded = load_model(cfg.model, cache_dir, device)
    dense = loaded.model.to(device)
    windows = build_calibration(cfg, loaded.tokenizer, cache_dir).windows
    bs = cfg.engine.batch_size

    def dense_forward() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for sl in batches(len(windows), bs):
                dense(input_ids=windows[sl].to(device), use_cache=False)
        return time.perf_counter() - t

    def prune(name: str) -> float:
        model = copy.deepcopy(dense)
        pruner = copy.deepcopy(cfg.pruner)
        pruner.name = name
        engine = SequentialPruner(model, adapter_for(model), pattern_from_config(cfg.sparsity), pruner, [], device,
                                  cfg.model.offload, bs, progress=False)
        t = time.perf_counter()
        engine.run(windows)
        return time.perf_counter() - t

    dense_forward()  # warm-up: allocator and kernel selection
    base = [dense_forward() for _ in range(args.repeats)]
    base_med = statistics.median(base)
    print(f"dense forward: median {base_med:.1f} s over {args.repeats} ({', '.join(f'{b:.1f}' for b in base)})", flush=True)
    rows = []
    for name in args.pruners:
        times = [prune(name) for _ in range(args.repeats)]
        med = statistics.median(times)
        rows.append((name, med, med / base_med, times))
        print(f"{name}: median {med:.1f} s = {med / base_med:.2f}x dense forward ({', '.join(f'{t:.1f}' for t in times)})", flush=True)

    env = environment(device)
    lines = [
        *report_header("Pruning speed", f"Default model, {windows.shape[0]} calibration windows x {windows.shape[1]} tokens, "
                       f"batch {bs}", env, f"python scripts/benchmark_prune.py --repeats {args.repeats} {' '.join(args.overrides)}"),
        f"Baseline: one dense forward of the whole calibration set (full model incl. LM head, inference_mode): "
        f"median **{base_med:.1f} s** ({', '.join(f'{b:.1f}' for b in base)}).",
        "",
        "| pruner | median time (s) | ratio to dense forward | runs (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {m:.1f} | {r:.2f}x | {', '.join(f'{t:.1f}' for t in ts)} |" for n, m, r, ts in rows]
    write_page(args.out, lines)


if __name__ == "__main__":
    main()

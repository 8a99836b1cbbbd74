"""One run: validate -> load -> calibration -> dense baseline -> prune -> evaluate -> results."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import blockwise, corpora, zeroshot
from .adapters import adapter_for
from .cache import cached_value, fingerprint, resolve_cache_dir
from .calibration import HUB_ROOTS, build_calibration, hub_root
from .config import real_source, validate
from .checkpoint import Checkpointer
from .engine import MEASURED, EngineOptions, SequentialPruner, check_pattern_fits, measured_sparsity
from .streams import StreamAllocator
from .models import check_model_source, load_model, resolve_device
from .patterns import pattern_from_config
from .perplexity import eval_windows, perplexity
from .results import ResultsFile, package_version, environment, peak_memory, summary_table
from .saving import recorded_sparsity, save_model
from .tracking import make_tracker

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_data_sources(cfg: DictConfig) -> None:
    """Hub datasets named anywhere in the config must be reachable before anything heavy starts."""
    hub = set(HUB_ROOTS)
    needed = {real_source(cfg.calibration), cfg.calibration.held_out_source} & hub
    needed |= set(cfg.eval.perplexity.datasets) & hub
    for name in sorted(needed):
        corpora.check_hub_root(hub_root(cfg, name), f"datasets.{name}")


def dense_perplexity_cached(cache_dir: Path, key_parts: tuple, compute) -> tuple[float, bool]:
    value, hit = cached_value(cache_dir / "dense_ppl" / f"{fingerprint(*key_parts)}.json", "ppl", key_parts, compute)
    return float(value), hit


def run(raw_cfg: DictConfig, output_dir: Optional[Path], progress: bool = True, group: Optional[str] = None,
        job_name: Optional[str] = None) -> dict:
    """One job. `group` and `job_name` label its W&B run (the sweep folder and the job's overrides)."""
    t_start = time.perf_counter()
    cfg = validate(raw_cfg)  # every check that needs no model, before anything heavy
    if cfg.resume:
        output_dir = Path(cfg.resume).expanduser().resolve()
        log.info("Resuming the run in %s (results.json is rewritten there)", output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpointer = None
    if output_dir is not None and cfg.pruner.name != "none" and (
            cfg.engine.checkpoint == "always" or cfg.engine.checkpoint == "auto" and cfg.reconstruction.granularity != "none"):
        checkpointer = Checkpointer(output_dir / "checkpoint", config)
        checkpointer.check_config()  # a resume under another config is refused before any work
    results = ResultsFile(output_dir / "results.json" if output_dir and cfg.save_results else None, config)
    tracker = make_tracker(cfg, config, output_dir, group, job_name or (output_dir.name if output_dir else "run"))
    try:
        _run(cfg, results, t_start, progress, output_dir, checkpointer, tracker)
    except BaseException as exc:
        results.data["status"] = "failed"
        results.data["error"] = f"{type(exc).__name__}: {exc}"
        results.write()
        _finish(tracker, results.data, failed=True)  # the sweep goes on; W&B shows the job as failed
        raise
    _finish(tracker, results.data, failed=False)
    return results.data


def _finish(tracker, data: dict, failed: bool) -> None:
    try:
        tracker.finish(data, failed)
    except Exception as exc:  # tracking must never turn a finished job into a failed one
        log.warning("Could not finish the W&B run (%s: %s); results.json is complete", type(exc).__name__, exc)


def _run(cfg: DictConfig, results: ResultsFile, t_start: float, progress: bool, output_dir: Optional[Path],
         checkpointer: Optional[Checkpointer], tracker) -> None:
    data, timing = results.data, results.data["timing"]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    device = resolve_device(cfg.model.device)
    check_model_source(cfg.model, cache_dir)
    check_data_sources(cfg)
    if cfg.eval.zeroshot.tasks:
        zeroshot.check_tasks(cfg.eval.zeroshot)  # typos and unreachable hub tasks fail before any loading
    pattern = pattern_from_config(cfg.sparsity)
    data["environment"] = environment(device)

    t = time.perf_counter()
    loaded = load_model(cfg.model, cache_dir, device)
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    if cfg.pruner.name != "none":
        check_pattern_fits(model, adapter, pattern, cfg.sparsity.skip)
    context = getattr(model.config, "max_position_embeddings", None)
    for key, length in (("calibration.seq_len", cfg.calibration.seq_len), ("eval.perplexity.seq_len", cfg.eval.perplexity.seq_len)):
        if context and length > context:
            from .errors import ConfigError

            raise ConfigError(f"{key}={length} exceeds the model's context of {context} tokens.")
    if cfg.model.offload:
        blockwise.move_outside_blocks(model, blocks, device)
    else:
        model.to(device)
    timing["load"] = time.perf_counter() - t
    recorded = recorded_sparsity(Path(loaded.name_or_path)) if cfg.model.source == "hub" else None
    if recorded is not None:  # a model saved by save_model=true: its zeros must have survived the round trip
        measured, _ = measured_sparsity({f"{i}.{n}": lin for i, b in enumerate(blocks) for n, lin in adapter.all_linears(b).items()})
        if abs(measured - recorded) > 1e-9:
            from .errors import ConfigError

            raise ConfigError(f"model.name_or_path={loaded.name_or_path}: measured sparsity {measured:.6f} differs from the "
                              f"{recorded:.6f} recorded when it was saved; the folder was modified or is damaged.")
        log.info("Saved pruned model: measured sparsity %.4f equals the recorded one", measured)
    data["model"] = {"name_or_path": loaded.name_or_path, "family": adapter.family, "num_blocks": len(blocks),
                     "fingerprint": loaded.fingerprint, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                     "parameters": sum(p.numel() for p in model.parameters()), "recorded_sparsity": recorded}
    log.info("Loaded %s (%s, %d blocks) in %.1f s", loaded.name_or_path, adapter.family, len(blocks), timing["load"])

    # evaluation texts first: a missing or short text fails before any pruning work
    evals = [eval_windows(name, cfg, tokenizer, cache_dir) for name in cfg.eval.perplexity.datasets]

    t = time.perf_counter()
    calib = None
    offload_blocks = blocks if cfg.model.offload and device.type != "cpu" else None  # forwards visit blocks one by one
    if cfg.pruner.name != "none":
        calib = build_calibration(cfg, tokenizer, cache_dir, model, device, loaded.fingerprint, offload_blocks, progress)
        data["calibration"] = {"source": cfg.calibration.source, **calib.summary(tokenizer)}
    timing["calibration"] = time.perf_counter() - t

    ppl_args = dict(batch_size=cfg.eval.perplexity.batch_size, device=device, offload=cfg.model.offload, progress=progress)
    t = time.perf_counter()
    z = cfg.eval.zeroshot
    tasks, dense_zs = None, None
    if z.tasks:
        # no calibration document may enter a task
        tasks = zeroshot.prepare_offline(z, tokenizer, cache_dir, calib.text if calib is not None else "")
        if cfg.eval.dense_baseline:
            key = ("dense_zeroshot", loaded.fingerprint, list(z.tasks), tasks.identity if tasks else None, z.num_fewshot,
                   z.limit, z.bootstrap_iters, str(next(model.parameters()).dtype), device.type, package_version("lm_eval"))
            dense_zs, hit = zeroshot.dense_cached(
                cache_dir, key, lambda: zeroshot.evaluate(model, tokenizer, z, tasks, device, offload_blocks))
            log.info("Dense zero-shot scores (%s): %s", "cached" if hit else "computed",
                     ", ".join(f"{n} {zeroshot.headline(v, z.metric):.3f}" for n, v in dense_zs.items()))
    dense = {}
    if cfg.eval.dense_baseline:
        for ev in evals:
            key = ("dense_ppl", loaded.fingerprint, ev.identity, tuple(ev.windows.shape), len(tokenizer))
            dense[ev.name], hit = dense_perplexity_cached(
                cache_dir, key, lambda ev=ev: perplexity(model, adapter, ev.windows, desc=f"dense perplexity {ev.name}", **ppl_args))
            log.info("Dense perplexity on %s: %.3f (%s)", ev.name, dense[ev.name], "cached" if hit else "computed")
    timing["eval"] = time.perf_counter() - t
    results.write()

    t = time.perf_counter()
    if cfg.pruner.name != "none":
        def on_block(record):
            data["blocks"] = [r.to_json() for r in sorted(engine.finished_records(), key=lambda r: r.index)]
            results.write()
            tracker.on_block(record.to_json())

        options = EngineOptions(recon=cfg.reconstruction, measure_error=cfg.eval.recon_error, seed=cfg.seed)
        storage = torch.device("cpu") if cfg.model.offload else device
        streams = StreamAllocator(cfg.memory.activations_gb, (output_dir or cache_dir) / "streams", storage)
        engine = SequentialPruner(model, adapter, pattern, cfg.pruner, cfg.sparsity.skip, device, cfg.model.offload,
                                  cfg.engine.batch_size, on_block=on_block, progress=progress, options=options,
                                  streams=streams, checkpointer=checkpointer)
        records = engine.run(calib.windows, calib.held_out, calib.val, calib.held_out_generated, calib.stats_count)
        data["blocks"] = [r.to_json() for r in sorted(records, key=lambda r: r.index)]
        # a CR window's report sits on both of its blocks: count each unit (or LR layer) once
        units = {(u["unit"], u.get("layer")): u["seconds"] for r in records for u in r.optimised}
        timing["reconstruct"] = sum(units.values())
        last = data["blocks"][-1].get("recon_error") if data["blocks"] else None
        if last:
            data["recon_error_output"] = {name: last[name]["after"] for name in MEASURED if name in last}
    timing["prune"] = time.perf_counter() - t - timing.get("reconstruct", 0.0)
    timing.setdefault("reconstruct", 0.0)

    all_linears = {f"{i}.{n}": lin for i, b in enumerate(blocks) for n, lin in adapter.all_linears(b).items()}
    overall, _ = measured_sparsity(all_linears)
    data["sparsity"] = {"overall": overall, "pattern": pattern.name if cfg.pruner.name != "none" else "dense",
                        "target": pattern.target_ratio if cfg.pruner.name != "none" else 0.0}

    t = time.perf_counter()
    for ev in evals:
        sparse = perplexity(model, adapter, ev.windows, desc=f"perplexity {ev.name}", **ppl_args)
        data["perplexity"][ev.name] = {"sparse": sparse, "dense": dense.get(ev.name), "windows": int(ev.windows.shape[0]),
                                       "seq_len": int(ev.windows.shape[1])}
    if z.tasks:
        t_zs = time.perf_counter()
        sparse_zs = zeroshot.evaluate(model, tokenizer, z, tasks, device, offload_blocks)
        data["zeroshot"] = zeroshot.summarise(sparse_zs, dense_zs, z.metric)
        timing["zeroshot"] = time.perf_counter() - t_zs
    timing["eval"] += time.perf_counter() - t
    if cfg.save_model and output_dir is not None:
        data["saved_model"] = save_model(model, tokenizer, output_dir / "model", data["sparsity"])
    timing["total"] = time.perf_counter() - t_start
    data["memory"] = peak_memory(device)
    data["status"] = "finished"
    results.write()
    if checkpointer is not None:
        checkpointer.clear()  # the run is complete: results.json holds everything
    log.info("Summary\n%s", summary_table(data))

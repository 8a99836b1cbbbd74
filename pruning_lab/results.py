"""results.json (the contract in shared/RESULTS.md): written atomically as the run goes, and the
summary table printed at the end of a run."""

from __future__ import annotations

import platform
import resource
import subprocess
from pathlib import Path
from typing import Any, Optional

import torch

from .cache import atomic_write_json

SCHEMA_VERSION = 1


def package_version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "lm_eval": package_version("lm_eval"),
        "git_sha": git_sha(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
    }


def peak_memory(device: torch.device) -> dict:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_rss_gb": rss_kb / 2**20, "peak_gpu_gb": gpu}


class ResultsFile:
    """Holds the results dict; every `write` replaces results.json in one rename."""

    def __init__(self, path: Optional[Path], config: dict):
        self.path = path
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "status": "running", "error": None, "config": config,
            "environment": None, "model": None, "calibration": None, "blocks": [],
            "recon_error_output": None, "sparsity": None, "perplexity": {}, "zeroshot": None,
            "timing": {}, "memory": None,
        }

    def write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.data)


def _num(v, width: int) -> str:
    return f"{v:{width}.4f}" if v is not None else f"{'-':>{width}}"


def summary_table(data: dict) -> str:
    """A short plain-text table: what a researcher wants to see when the run ends."""
    lines = []
    model = (data.get("model") or {}).get("name_or_path", "?")
    cfg = data.get("config") or {}
    sp = data.get("sparsity") or {}
    lines.append(f"model {model} | pruner {cfg.get('pruner', {}).get('name')} | pattern {sp.get('pattern')} | "
                 f"measured sparsity {sp.get('overall', float('nan')):.4f}")
    ppl = data.get("perplexity") or {}
    if ppl:
        lines.append(f"{'perplexity':<24}{'dense':>10}{'pruned':>10}{'ratio':>8}{'windows':>9}")
        for name, r in ppl.items():
            dense = r.get("dense")
            ratio = f"{r['sparse'] / dense:8.3f}" if dense else f"{'-':>8}"
            dense_s = f"{dense:10.3f}" if dense else f"{'-':>10}"
            lines.append(f"{name:<24}{dense_s}{r['sparse']:10.3f}{ratio}{r['windows']:>9}")
    blocks = [b for b in data.get("blocks") or [] if b.get("recon_error")]
    if blocks:
        lines.append(f"{'reconstruction error':<24}{'last block':>12}{'mean':>10}")
        for name in ("calib", "held_out", "held_out_generated"):
            values = [b["recon_error"][name]["after"] for b in blocks if name in b["recon_error"]]
            if values:
                lines.append(f"{name:<24}{values[-1]:12.4f}{sum(values) / len(values):10.4f}")
        out = data.get("recon_error_output") or {}
        if "calib" in out and "held_out" in out:
            lines.append(f"held-out minus calibration at the output: {out['held_out'] - out['calib']:+.4f}")
    zs = data.get("zeroshot") or {}
    if zs.get("tasks"):
        metric = zs.get("metric", "acc")
        lines.append(f"{'zero-shot (' + metric + ')':<24}{'dense':>10}{'pruned':>10}{'stderr':>8}{'items':>9}")
        for name, r in zs["tasks"].items():
            sparse = r["sparse"]
            key = metric if sparse.get(metric) is not None else "acc"  # last-word tasks have acc only
            dense = (r.get("dense") or {}).get(key)
            lines.append(f"{name:<24}{_num(dense, 10)}{_num(sparse[key], 10)}{_num(sparse.get(key + '_stderr'), 8)}{r['n']:>9}")
        m = zs.get("mean") or {}
        lines.append(f"{'mean':<24}{_num(m.get('dense'), 10)}{_num(m.get('sparse'), 10)}")
    cal = data.get("calibration") or {}
    if cal.get("generation"):
        gen = cal["generation"]
        lines.append(f"calibration {cal.get('source')}: parts {cal.get('parts')}, {gen['samples_generated']} samples "
                     f"generated in {gen['seconds']:.1f} s (cache {gen['cache']})")
    t = data.get("timing") or {}
    if t:
        lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return "\n".join(lines)

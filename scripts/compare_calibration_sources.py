"""Self-generated calibration data on the embedded model: how long generating it takes, what it
looks like, and what it does against real data. Writes docs/calibration_sources.md.

1. Generation: 64 samples of 512 tokens with the default settings (uniform first token, 5 greedy
   tokens, temperature 1, top-k 50), timed without the cache, against one dense forward of the same
   number of tokens measured in the same run; three samples shown.
2. Comparison at 50% SparseGPT with BR+GP+CR (the strongest preset; 2 epochs per window so it fits
   here), same protocol as docs/reconstruction.md: real N windows vs real N + self-generated N vs
   self-generated N (N = 32 x 256 tokens). Every run is measured on the same 16 real held-out windows
   (embedded news stories pruning never sees) and on the same 16 held-out generated samples (their
   own random stream, never used for pruning); perplexity on 64 x 512 tokens of embedded Wikipedia.

    python scripts/compare_calibration_sources.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from _common import page_arguments, compose, report_header, run_or_reuse, write_page

PROTOCOL = ["pruner=sparsegpt", "sparsity=unstructured", "reconstruction=br_gp_cr", "reconstruction.epochs=2",
            "calibration.seq_len=256", "calibration.held_out_samples=16", "calibration.held_out_generated=16",
            "eval.perplexity.max_windows=64", "eval.perplexity.seq_len=512"]
N = 32
SOURCES = {
    "real": ["calibration=embedded", f"calibration.num_samples={N}"],
    "real + self-generated": ["calibration=mixed", f"calibration.real.num_samples={N}",
                              f"calibration.self_generated.num_samples={N}"],
    "self-generated": ["calibration=self_generated", f"calibration.num_samples={N}"],
}


def time_generation(samples: int, seq_len: int) -> tuple[dict, list[str]]:
    from pruning_lab.cache import resolve_cache_dir
    from pruning_lab.generation import generate
    from pruning_lab.models import load_model

    cfg = compose(["calibration=self_generated"])
    device = torch.device("cpu")
    loaded = load_model(cfg.model, resolve_cache_dir(cfg.cache_dir), device)
    model, tok = loaded.model, loaded.tokenizer
    out = generate(model, tok, cfg.calibration.self_generated, samples, seq_len, device)
    # baseline in the same run: one dense forward of as many tokens (batches of 8 windows)
    forward_s = []
    for _ in range(2):
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, samples, 8):
                model(input_ids=out.tokens[i : i + 8], use_cache=False)
        forward_s.append(time.perf_counter() - t)
    fwd = statistics.median(forward_s)
    distinct = torch.unique(out.tokens).numel()
    texts = [tok.decode(r) for r in out.tokens[:3]]
    return {"seconds": out.seconds, "forward": fwd, "redraws": out.redraws, "unfiltered": out.unfiltered,
            "distinct": distinct, "tokens": out.tokens.numel()}, texts


def run_or_reuse_protocol(name: str, overrides: list[str], runs_dir: Path) -> dict:
    return run_or_reuse(name, [*PROTOCOL, *overrides], runs_dir)


def row(label: str, r: dict) -> str:
    blocks = r["blocks"]

    def err(name):
        after = [b["recon_error"][name]["after"] for b in blocks]
        return after[-1], sum(after) / len(after)

    c, h, g = err("calib"), err("held_out"), err("held_out_generated")
    parts = " + ".join(f"{n} {k.replace('_', '-')}" for k, n in r["calibration"]["parts"].items())
    t = r["timing"]
    zs = (r.get("zeroshot") or {}).get("mean") or {}
    zs_mean = f"{zs['sparse']:.3f}" if zs.get("sparse") is not None else "-"
    return (f"| {label} | {parts} | {c[0]:.4f} | {c[1]:.4f} | {h[0]:.4f} | {h[1]:.4f} | {h[0] - c[0]:+.4f} | {g[0]:.4f} | "
            f"{r['perplexity']['embedded_wiki']['sparse']:.3f} | {zs_mean} | {t['prune'] + t['reconstruct']:.0f} |")


def main() -> None:
    args = page_arguments(__doc__, "docs/calibration_sources.md", "outputs/calibration_sources")
    start = time.time()
    gen, texts = time_generation(64, 512)
    runs = {label: run_or_reuse_protocol(label.replace(" + ", "_plus_").replace(" ", "_"), o, Path(args.runs_dir))
            for label, o in SOURCES.items()}
    minutes = (time.time() - start) / 60
    env = runs["real"]["environment"]
    dense = runs["real"]["perplexity"]["embedded_wiki"]["dense"]
    lines = report_header("Calibration sources: real, self-generated, mixed", "SmolLM2-135M (fp32, CPU)", env,
                          "python scripts/compare_calibration_sources.py")
    lines += [
        f"Wall time of this invocation: {minutes:.1f} min (finished runs in `{args.runs_dir}` are reused).",
        "",
        "## Generating 64 samples of 512 tokens",
        "",
        "Default settings: first token uniform over the vocabulary (special tokens excluded), 5 greedy tokens,",
        "then sampling at temperature 1.0 with top-k 50; batches of 16 with the KV cache; prefix filter on.",
        "",
        "| what | value |", "|---|---|",
        f"| generation, 64 x 512 tokens | {gen['seconds']:.1f} s ({gen['tokens'] / gen['seconds']:.0f} tokens/s) |",
        f"| one dense forward of the same 64 x 512 tokens (batches of 8, median of 2) | {gen['forward']:.1f} s |",
        f"| generation / dense forward | {gen['seconds'] / gen['forward']:.2f}x |",
        f"| prefixes redrawn by the filter | {gen['redraws']} ({gen['unfiltered']} kept after max_redraws) |",
        f"| distinct tokens in the 32768 generated | {gen['distinct']} |",
        "",
        "The first three samples (first 600 characters each):",
        "",
    ]
    for t in texts:
        lines += ["```text", t[:600].replace("```", "'''"), "```", ""]
    lines += [
        "## Real vs real + self-generated vs self-generated",
        "",
        f"SparseGPT 50% unstructured, BR+GP+CR (window 2, 2 epochs), N = {N} windows of 256 tokens per part.",
        "Errors are relative block-output errors against the dense model (`after` reconstruction), last",
        "block and mean over blocks. *Held-out (real)*: 16 windows of news stories pruning never sees, the",
        "same windows in every run. *Held-out (generated)*: 16 generated samples from their own random",
        f"stream, the same in every run and never used for pruning. Perplexity: embedded Wikipedia (dense {dense:.3f}).",
        "Mixed: pruner statistics from the real part only (`stats_from: real`), reconstruction on both.",
        "Zero-shot mean: accuracy averaged over the two offline lm-eval tasks built from embedded Wikipedia",
        "(pl_next_sentence, pl_last_word; 100 items each, docs/zeroshot.md); dense: "
        + (f"{runs['real']['zeroshot']['mean']['dense']:.3f}." if (runs["real"].get("zeroshot") or {}).get("mean") else "-."),
        "",
        "| calibration | parts | calib. error, last | calib. error, mean | held-out (real), last | held-out (real), mean | "
        "held-out - calib. (last) | held-out (generated), last | perplexity | zero-shot mean (acc) | prune + reconstruct (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(label, r) for label, r in runs.items()],
        "",
    ]
    write_page(args.out, lines)


if __name__ == "__main__":
    main()

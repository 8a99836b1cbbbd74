"""Zero-shot accuracy of the embedded model, dense and pruned at 50%, on the offline lm-eval tasks
built from embedded Wikipedia (default sizes: 100 items per task, contexts of at most 64 tokens).
Writes docs/zeroshot.md.

    python scripts/zeroshot_table.py [--max-items 150]
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from _common import page_arguments, report_header, run_or_reuse, write_page

CHANCE = {"pl_next_sentence": 0.25, "pl_last_word": 0.0}  # 4 choices; exact-word greedy match
PRUNERS = ("magnitude", "wanda", "sparsegpt")


def fmt(score: dict, key: str) -> str:
    v, e = score.get(key), score.get(f"{key}_stderr")
    return "-" if v is None else (f"{v:.3f} ± {e:.3f}" if e is not None else f"{v:.3f}")


def main() -> None:
    args = page_arguments(__doc__, "docs/zeroshot.md", "outputs/zeroshot_table", lambda ap: ap.add_argument(
        "--max-items", type=int, default=None, help="items per offline task (default: the config's)"))
    extra = [f"eval.zeroshot.offline.max_items={args.max_items}"] if args.max_items else []
    start = time.time()
    runs = {p: run_or_reuse(f"{p}-50{'-n' + str(args.max_items) if args.max_items else ''}", [f"pruner={p}", *extra],
                            Path(args.runs_dir)) for p in PRUNERS}
    minutes = (time.time() - start) / 60
    first = runs[PRUNERS[0]]
    zs = first["zeroshot"]
    lines = report_header("Zero-shot accuracy through lm-eval (offline tasks)", "SmolLM2-135M (fp32, CPU)",
                          first["environment"], "python scripts/zeroshot_table.py" + (f" --max-items {args.max_items}" if extra else ""))
    lines += [f"Wall time: {minutes:.1f} min (finished runs in `{args.runs_dir}` are reused). Each run: the default",
              "job with the pruner named (50% unstructured, 64 x 512 calibration windows of embedded news).",
              "", "## Dense model", "",
              "| task | items | acc | acc_norm | chance | (acc - chance) / stderr |", "|---|---|---|---|---|---|"]
    for name, t in zs["tasks"].items():
        d = t["dense"]
        z = (d["acc"] - CHANCE[name]) / d["acc_stderr"] if d.get("acc_stderr") else math.nan
        lines.append(f"| {name} | {t['n']} | {fmt(d, 'acc')} | {fmt(d, 'acc_norm')} | {CHANCE[name]:.2f} | {z:.1f} |")
    lines += ["", "## Pruned to 50%", "", "| pruner | task | acc | acc_norm | acc change vs dense | perplexity (embedded_wiki) |",
              "|---|---|---|---|---|---|"]
    for p, r in runs.items():
        for name, t in r["zeroshot"]["tasks"].items():
            s, d = t["sparse"], t["dense"]
            lines.append(f"| {p} | {name} | {fmt(s, 'acc')} | {fmt(s, 'acc_norm')} | {s['acc'] - d['acc']:+.3f} | "
                         f"{r['perplexity']['embedded_wiki']['sparse']:.2f} |")
        m = r["zeroshot"]["mean"]
        lines.append(f"| {p} | **mean (acc)** | {m['sparse']:.3f} | | {m['sparse'] - m['dense']:+.3f} | |")
    lines += ["", f"Dense mean (acc): {zs['mean']['dense']:.3f}; dense perplexity "
              f"{first['perplexity']['embedded_wiki']['dense']:.3f}.", "",
              "Time the sparse zero-shot evaluation adds to a run (`timing.zeroshot`): "
              + ", ".join(f"{p} {r['timing']['zeroshot']:.0f} s" for p, r in runs.items())
              + "; the dense scores are computed once and cached.", ""]
    write_page(args.out, lines)


if __name__ == "__main__":
    main()

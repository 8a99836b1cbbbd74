"""Run the CPU twins of two paper experiments as Hydra sweeps, report them, and measure what the
shared caches save; writes docs/sweep_results.md and its figures.

    python scripts/sweep_results.py

1. `pruning-lab experiment=recon_techniques_cpu` (8 jobs) and `experiment=self_generated_cpu`
   (6 jobs), one after the other, sharing one cache folder that starts empty (RUNS_DIR/cache), each
   into RUNS_DIR/<experiment>; the wall time of each sweep is recorded in RUNS_DIR/<experiment>/wall.json.
2. `pruning-lab-report` on each sweep; its tables and figures go into the page.
3. The control: the self_generated_cpu jobs with BR+GP (real, real + self-generated, self-generated)
   again, with caches disabled: every job gets its own empty cache folder, so it dequantises the
   model, computes the dense baselines and generates its samples itself. Compared with the same three
   jobs of the cached sweep.

A sweep whose wall time is recorded (RUNS_DIR/<experiment>/wall.json) is reused, so an interrupted
invocation continues where it stopped; delete RUNS_DIR to measure from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import page_arguments, report_header, write_page

EXPERIMENTS = {
    "recon_techniques_cpu": "Reconstruction techniques: {LR, BR, BR+GP, BR+GP+CR} x {SparseGPT, Wanda}, 50% unstructured",
    "self_generated_cpu": "Calibration data: {real, real + self-generated, self-generated} x {BR+GP, BR+GP+CR}, SparseGPT 50%",
}
CONTROL = "self_generated_cpu"  # the control reruns jobs of this sweep with caches disabled


def run_sweep(experiment: str, folder: Path, extra: list[str], env: dict, cache: str) -> dict:
    """One `pruning-lab experiment=...` multirun, timed from the outside (process start to exit).

    A sweep with a recorded wall time is reused as it is (its failed jobs, if any, are listed on the
    page, not rerun). A folder without one was interrupted: the sweep is launched again into it, where
    reconstructing jobs resume from their checkpoints, and the record says so."""
    if (folder / "wall.json").is_file():
        return json.loads((folder / "wall.json").read_text())
    resumed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pruning_lab", f"experiment={experiment}", f"hydra.sweep.dir={folder}", *extra]
    cache_path = Path(cache)
    cold = not cache_path.exists() or not any(cache_path.iterdir())
    print(f"Running {' '.join(command[2:])} (log: {folder}.log)", flush=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t = time.perf_counter()
    with open(f"{folder}.log", "a") as logfile:
        proc = subprocess.run(command, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    wall = {"experiment": experiment, "command": " ".join(command[2:]), "started": started,
            "seconds": time.perf_counter() - t, "returncode": proc.returncode, "cache": cache,
            "cache_empty_at_start": cold, "resumed": resumed}
    if proc.returncode != 0:
        raise SystemExit(f"{experiment}: pruning-lab exited with {proc.returncode}; see {folder}.log")
    (folder / "wall.json").write_text(json.dumps(wall, indent=1) + "\n")
    return wall


def report_of(folder: Path, figures_dir: Path, prefix: str) -> tuple[list, list[str], list[dict], list[str]]:
    """Jobs, perplexity datasets, table rows and figure paths (copied next to the page) of one sweep."""
    from pruning_lab.report import collect, report, sweep_rows

    jobs = collect(folder)
    out = report(folder, jobs)
    datasets, rows = sweep_rows(jobs)
    figures_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name in ("recon_error_per_block.png", "error_vs_perplexity.png"):
        if (out / name).is_file():
            shutil.copyfile(out / name, figures_dir / f"{prefix}_{name}")
            pictures.append(f"{figures_dir.name}/{prefix}_{name}")
    return jobs, datasets, rows, pictures


def settings_of(rows: list[dict]) -> list[str]:
    """The swept settings: pruning-lab-report puts them before the `job` column."""
    keys = list(rows[0])
    return keys[: keys.index("job")]


def table(rows: list[dict]) -> list[str]:
    """pruning-lab-report's markdown table, with the job first and the status only where a job did not finish."""
    from pruning_lab.report import tables

    settings = settings_of(rows)
    show_status = any(r["status"] != "finished" for r in rows)
    order = ["job", *settings, *(["status"] if show_status else [])]
    rows = [{**{c: r[c] for c in order}, **{c: v for c, v in r.items() if c not in order and c != "status"}} for r in rows]
    return tables(rows)[0].rstrip("\n").split("\n")


def observations(rows: list[dict]) -> list[str]:
    """What the table says about reconstruction error against generalisation, computed from it."""
    from pruning_lab.report import fmt, settings_label

    done = [r for r in rows if r["status"] == "finished" and r.get("calib error (last)") is not None]
    if len(done) < 2:
        return []
    settings = settings_of(rows)
    ppl = next(c for c in rows[0] if c.startswith("ppl"))

    def name(r):
        return settings_label({c: r[c] for c in settings})

    def rank(key, r, reverse=False):
        return 1 + sorted((x[key] for x in done), reverse=reverse).index(r[key])

    lowest_calib = min(done, key=lambda r: r["calib error (last)"])
    lowest_held = min(done, key=lambda r: r["held-out error (last)"])
    best_ppl = min(done, key=lambda r: r[ppl])
    n = len(done)
    lines = [
        f"- Lowest calibration error at the last block: {name(lowest_calib)} ({fmt(lowest_calib['calib error (last)'])}); "
        f"its held-out error ranks {rank('held-out error (last)', lowest_calib)} of {n} and its perplexity "
        f"{rank(ppl, lowest_calib)} of {n} ({fmt(lowest_calib[ppl])}).",
        f"- Lowest held-out error: {name(lowest_held)} ({fmt(lowest_held['held-out error (last)'])}); perplexity "
        f"rank {rank(ppl, lowest_held)} of {n}.",
        f"- Best perplexity: {name(best_ppl)} ({fmt(best_ppl[ppl])}); zero-shot mean {fmt(best_ppl['zero-shot mean'])} "
        f"(rank {rank('zero-shot mean', best_ppl, reverse=True)} of {n}, higher is better).",
    ]
    gaps = sorted(done, key=lambda r: r["held-out error (last)"] - r["calib error (last)"])
    lines.append("- Held-out minus calibration error at the last block (the generalisation gap), smallest first: "
                 + "; ".join(f"{name(r)} {r['held-out error (last)'] - r['calib error (last)']:+.4f}" for r in gaps) + ".")
    return lines


SHARED_PHASES = ("load", "calibration", "eval")  # where cached work shows: model, generated samples, dense baselines


def control_section(sweep_jobs: list, control: Path, wall: dict, all_jobs: list) -> list[str]:
    """The cache-disabled jobs against the same jobs of the cached sweep (sweep_jobs), phase by phase."""
    from pruning_lab.report import collect

    cached = {tuple(sorted(o for o in j.overrides if not o.startswith("cache_dir"))): j for j in sweep_jobs}
    phases = ("load", "calibration", "prune + reconstruct", "eval", "total")
    lines = ["| job | " + " | ".join(f"{p} (s)" for p in phases) + " |", "|" + "---|" * (len(phases) + 1)]
    with_total = without_total = 0.0
    matched = 0
    overhead: dict[str, float] = {}  # calibration source -> seconds the shared phases took longer without caches
    for job in collect(control):
        key = tuple(sorted(o for o in job.overrides if not o.startswith("cache_dir")))
        twin = cached.get(key)
        if twin is None or not (job.finished and twin.finished):
            lines.append(f"| {' '.join(job.overrides)} | no finished twin in the cached sweep |" + " |" * (len(phases) - 1))
            continue
        label = " ".join(o for o in key if not o.startswith("experiment="))
        a, b = (dict(j.results["timing"]) for j in (twin, job))
        for t in (a, b):
            t["prune + reconstruct"] = t.get("prune", 0.0) + t.get("reconstruct", 0.0)
        lines.append(f"| {label} | " + " | ".join(f"{a.get(p, 0):.0f} -> {b.get(p, 0):.0f}" for p in phases) + " |")
        with_total += a["total"]
        without_total += b["total"]
        matched += 1
        overhead[job.results["calibration"]["source"]] = sum(b.get(p, 0.0) - a.get(p, 0.0) for p in SHARED_PHASES)
    saved = without_total - with_total
    lines += ["", "Each cell: with the shared cache -> caches disabled.", "",
              f"Sum over the {matched} jobs: {with_total / 60:.1f} min with the shared cache, {without_total / 60:.1f} min "
              f"with caches disabled: the caches saved {saved / 60:.1f} min "
              f"({100 * saved / max(without_total, 1e-9):.0f}% of the uncached time). Wall time of the control sweep "
              f"(process start to exit): {wall['seconds'] / 60:.1f} min."]
    done = [j for j in all_jobs if j.finished]
    covered = [j for j in done if j.results["calibration"]["source"] in overhead]
    if covered:
        cached_sum = sum(j.results["timing"]["total"] for j in done)
        extra = sum(overhead[j.results["calibration"]["source"]] for j in covered)
        lines += ["", f"Estimated for all {len(done)} jobs of both sweeps (not measured: each job's own time plus the "
                  f"extra {'/'.join(SHARED_PHASES)} time measured above for its calibration source; "
                  f"{len(covered)} of {len(done)} jobs have a measured source): {cached_sum / 60:.1f} min with the "
                  f"shared cache against about {(cached_sum + extra) / 60:.1f} min without, i.e. the caches save about "
                  f"{extra / 60:.1f} min ({100 * extra / (cached_sum + extra):.0f}%)."]
    return lines


def main() -> None:
    args = page_arguments(__doc__, "docs/sweep_results.md", "outputs/sweep_results", add=lambda ap: ap.add_argument(
        "--control", nargs="*", default=["reconstruction=br_gp"],
        help=f"overrides that pick the {CONTROL} jobs rerun with caches disabled (default: the three BR+GP jobs)"))
    runs = Path(args.runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    page = Path(args.out)
    figures_dir = page.parent / "sweep_results"
    env = dict(os.environ, PRUNING_LAB_CACHE=str(runs / "cache"))
    walls = {exp: run_sweep(exp, runs / exp, [], env, str(runs / "cache")) for exp in EXPERIMENTS}
    # the control: no PRUNING_LAB_CACHE (it would win over cache_dir) and one fresh cache folder per job
    control_env = {k: v for k, v in os.environ.items() if k != "PRUNING_LAB_CACHE"}
    control_dir = runs / "control_no_cache"
    control_wall = run_sweep(CONTROL, control_dir, [*args.control, "cache_dir=${hydra:runtime.output_dir}/cache"],
                             control_env, "one empty folder per job")
    for cache in control_dir.glob("*/cache"):
        shutil.rmtree(cache)  # scratch of the measurement: a dequantised model per job

    reports = {exp: report_of(runs / exp, figures_dir, exp) for exp in EXPERIMENTS}
    first = reports["recon_techniques_cpu"][0][0].results
    env_info = first["environment"]
    cfg = first["config"]
    lines = report_header("Sweep results: reconstruction techniques and self-generated data (CPU twins)",
                          "SmolLM2-135M (fp32, CPU)", env_info, "python scripts/sweep_results.py")
    total = sum(w["seconds"] for w in walls.values())
    ppl_name, ppl = next(iter(first["perplexity"].items()))
    tasks = first["zeroshot"]["tasks"]
    # the standard error of the two-task mean, from lm-eval's per-task standard errors (independent items)
    zs_se = sum(t["sparse"]["acc_stderr"] ** 2 for t in tasks.values()) ** 0.5 / len(tasks)
    lines += [
        f"Both sweeps ran with the basic launcher, one job after the other, sharing one cache folder that was "
        f"{'empty' if walls['recon_techniques_cpu']['cache_empty_at_start'] else 'NOT empty'} when the first sweep "
        f"started. Calibration: {cfg['calibration']['num_samples']} x {cfg['calibration']['seq_len']} tokens per part, "
        f"{cfg['calibration']['held_out_samples']} held-out windows of embedded news; {cfg['reconstruction'].get('epochs')} "
        f"epochs per unit; perplexity on {ppl['windows']} x {ppl['seq_len']} tokens of {ppl_name}; zero-shot mean = "
        f"accuracy averaged over the offline lm-eval tasks {', '.join(tasks)} "
        f"({' and '.join(str(t['n']) for t in tasks.values())} items, docs/zeroshot.md), whose standard error is about "
        f"{zs_se:.3f}: zero-shot differences smaller than that are noise. Errors are relative block-output errors "
        "against the dense model after reconstruction, at the last block and averaged over blocks; the held-out "
        "windows are never used for pruning and are the same in every job.",
        "",
        "| sweep | jobs | wall time (min) | command |", "|---|---|---|---|",
        *[f"| {exp} | {len(reports[exp][0])} | {w['seconds'] / 60:.1f}{' (resumed: the continuation only)' if w.get('resumed') else ''} | "
          f"`pruning-lab {w['command'].replace(str(runs), args.runs_dir)}` |" for exp, w in walls.items()],
        f"| both | {sum(len(r[0]) for r in reports.values())} | {total / 60:.1f} | |",
        "",
    ]
    from pruning_lab.report import dense_lines

    for exp, (jobs, datasets, rows, pictures) in reports.items():
        lines += [f"## {exp}", "", EXPERIMENTS[exp] + f". Report: `pruning-lab-report {args.runs_dir}/{exp}`.", "",
                  *dense_lines(jobs, datasets), *table(rows), "", *observations(rows), ""]
        problems = [j for j in jobs if not j.finished]
        lines += [f"- FAILED or partial: `{j.folder.name}`: {j.problem}" for j in problems]
        lines += [f"![{p}]({p})" for p in pictures] + [""]
    lines += ["## What the caches saved", "",
              f"Control: the jobs of {CONTROL} picked by `{' '.join(args.control)}` again, with caches disabled "
              "(`cache_dir` = an empty "
              "folder inside each job, no `PRUNING_LAB_CACHE`): each job dequantises the model, reads the corpora, "
              "computes the dense perplexity and dense zero-shot scores and generates its self-generated samples "
              "itself. Compared, phase by phase (results.json `timing`), with the same jobs in the cached sweep "
              "(where earlier jobs had filled the cache). `eval` includes the dense baselines; `calibration` the "
              "generation of self-generated samples.", "",
              *control_section(reports[CONTROL][0], control_dir, control_wall, [j for r in reports.values() for j in r[0]]), ""]
    write_page(str(page), lines)


if __name__ == "__main__":
    main()

"""`pruning-lab-report MULTIRUN_DIR`: one table and the figures of a sweep, from its results.json files.

Writes MULTIRUN_DIR/report/: summary.md, summary.csv and summary.tex (one row per job, labelled by
the settings the sweep varied; columns: calibration and held-out reconstruction error at the last
block and averaged over blocks, perplexities, zero-shot mean, time) and two figures:
recon_error_per_block.png (the after-reconstruction error of every block, calibration solid and
held-out dashed, one colour per job) and error_vs_perplexity.png (calibration and held-out error at
the last block against perplexity across jobs: lower calibration error with higher perplexity is the
overfitting the paper warns about). Failed or partial jobs are listed with their error, never
dropped; an unreadable results.json is reported as such and the report goes on.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .cache import atomic_write_text
from .errors import ConfigError

log = logging.getLogger(__name__)

ERRORS = ("calib", "held_out", "held_out_generated")  # held_out_generated only where a job measured it
LABELS = {"calib": "calib", "held_out": "held-out", "held_out_generated": "held-out generated"}


@dataclass
class Job:
    folder: Path
    overrides: list[str]
    results: Optional[dict] = None
    problem: Optional[str] = None  # why the job is not a finished row
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.results is not None and self.results.get("status") == "finished"


def _overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    try:
        # plain YAML, not OmegaConf: an override such as cache_dir=${hydra:runtime.output_dir}/cache is
        # a label here and must not be resolved
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
        return [str(o) for o in overrides] if isinstance(overrides, list) else []
    except (yaml.YAMLError, UnicodeDecodeError):  # a damaged overrides file must not stop the report
        return []


def collect(root: Path) -> list[Job]:
    """Every job folder of a sweep: folders holding results.json or a .hydra record."""
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder (give a multirun folder, e.g. outputs/multirun/DATE/TIME).")
    folders = sorted({p.parent for p in root.rglob("results.json") if "report" not in p.parts}
                     | {p.parent for p in root.rglob(".hydra") if p.parent != root},
                     key=lambda p: [int(x) if x.isdigit() else x for x in p.relative_to(root).parts])
    folders = [f for f in folders if "eval" not in f.relative_to(root).parts]
    jobs = []
    for folder in folders:
        job = Job(folder, _overrides(folder))
        path = folder / "results.json"
        if not path.is_file():
            job.problem = "no results.json (the job died before writing it)"
        else:
            try:
                job.results = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(job.results, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                job.results, job.problem = None, f"unreadable results.json ({exc})"
            else:
                status = job.results.get("status")
                if status != "finished":
                    job.problem = f"status {status}" + (f": {job.results.get('error')}" if job.results.get("error") else "")
        jobs.append(job)
    if not jobs:
        raise ConfigError(f"{root}: no job folders with results.json; is this a pruning-lab multirun folder?")
    versions = {j.results.get("schema_version") for j in jobs if j.results is not None}
    if len(versions) > 1:
        by = {v: [j.folder.name for j in jobs if j.results is not None and j.results.get("schema_version") == v] for v in versions}
        raise ConfigError(f"{root}: results.json files of different schema versions {by}; report each version's jobs "
                          "separately (move them into their own folders).")
    _label(jobs)
    return jobs


def _label(jobs: list[Job]) -> None:
    """Settings = the override keys whose values differ between jobs (all overrides if one job)."""
    parsed = [dict(o.split("=", 1) for o in j.overrides if "=" in o) for j in jobs]
    keys = sorted({k for p in parsed for k in p})
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1] or keys
    for job, p in zip(jobs, parsed):
        job.settings = {k.lstrip("+~"): p.get(k, "-") for k in varying}


def errors(results: dict) -> dict[str, tuple[float, float]]:
    blocks = [b for b in results.get("blocks") or [] if b.get("recon_error")]
    out = {}
    for name in ERRORS:
        values = [b["recon_error"][name]["after"] for b in blocks if name in b["recon_error"]]
        if values:
            out[name] = (values[-1], sum(values) / len(values))
    return out


def measured_errors(jobs: list[Job]) -> list[str]:
    """The error kinds any finished job measured, in ERRORS order (calibration and held-out always)."""
    seen = {name for j in jobs if j.results for name in errors(j.results)}
    return [name for name in ERRORS if name in seen or name != "held_out_generated"]


def sweep_rows(jobs: list[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """(perplexity datasets, one table row per job) of a sweep."""
    datasets = sorted({ds for j in jobs if j.results for ds in (j.results.get("perplexity") or {})})
    names = tuple(measured_errors(jobs))
    return datasets, [row(j, datasets, names) for j in jobs]


def row(job: Job, datasets: list[str], error_names: tuple[str, ...] = ERRORS[:2]) -> dict[str, Any]:
    r = job.results or {}
    e = errors(r)
    out: dict[str, Any] = dict(job.settings)
    out["job"] = job.folder.name
    out["status"] = r.get("status", "missing")
    for name in error_names:
        out[f"{LABELS[name]} error (last)"] = e.get(name, (None, None))[0]
        out[f"{LABELS[name]} error (mean)"] = e.get(name, (None, None))[1]
    for ds in datasets:
        out[f"ppl {ds}"] = ((r.get("perplexity") or {}).get(ds) or {}).get("sparse")
    out["zero-shot mean"] = ((r.get("zeroshot") or {}).get("mean") or {}).get("sparse")
    total = (r.get("timing") or {}).get("total")
    out["time (s)"] = None if total is None else round(total)  # whole seconds: the clock is not better than that
    return out


def dense_lines(jobs: list[Job], datasets: list[str]) -> list[str]:
    """The dense model's perplexities and zero-shot mean, the yardstick of every row. Jobs of one
    sweep normally agree; where they do not (other eval windows or tasks), every value is listed."""
    parts = []
    for ds in datasets:
        values = sorted({round(v, 4) for j in jobs if j.results
                         for v in [((j.results.get("perplexity") or {}).get(ds) or {}).get("dense")] if v is not None})
        if values:
            parts.append(f"perplexity {ds} {' / '.join(fmt(v) for v in values)}")
    zs = sorted({round(v, 4) for j in jobs if j.results
                 for v in [((j.results.get("zeroshot") or {}).get("mean") or {}).get("dense")] if v is not None})
    if zs:
        parts.append(f"zero-shot mean {' / '.join(fmt(v) for v in zs)}")
    return [f"Dense model: {', '.join(parts)}.", ""] if parts else []


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def tables(rows: list[dict]) -> tuple[str, str, str]:
    columns = list(rows[0])
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{c: ("" if r[c] is None else r[c]) for c in columns} for r in rows])

    def tex(s: str) -> str:
        return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&").replace("#", "\\#")

    latex = ["\\begin{tabular}{" + "l" * len(columns) + "}", "\\toprule",
             " & ".join(tex(c) for c in columns) + " \\\\", "\\midrule"]
    latex += [" & ".join(tex(fmt(r[c])) for c in columns) + " \\\\" for r in rows]
    latex += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(md) + "\n", buf.getvalue(), "\n".join(latex) + "\n"


def settings_label(settings: dict[str, Any]) -> str:
    """`reconstruction=br, num_samples=32`: the swept settings of one job, last key part only."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items())


def _label_text(job: Job) -> str:
    return settings_label(job.settings) or job.folder.name


def figures(jobs: list[Job], out: Path, dataset: Optional[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    done = [j for j in jobs if j.finished and errors(j.results)]
    if done:
        fig, ax = plt.subplots(figsize=(8, 5))
        for k, job in enumerate(done):
            colour = f"C{k % 10}"
            blocks = [b for b in job.results["blocks"] if b.get("recon_error")]
            for name, style in (("calib", "-"), ("held_out", "--")):
                pts = [(b["index"], b["recon_error"][name]["after"]) for b in blocks if name in b["recon_error"]]
                if pts:
                    # one legend entry per job: the line style already says calibration or held-out
                    ax.plot(*zip(*pts), style, color=colour, label=_label_text(job) if name == "calib" else None)
        ax.set_xlabel("block")
        ax.set_ylabel("relative reconstruction error (after)")
        ax.set_yscale("log")
        ax.set_title("Reconstruction error per block: calibration (solid) and held-out (dashed)")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over the curves
        fig.tight_layout()
        fig.savefig(out / "recon_error_per_block.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append("recon_error_per_block.png")
    with_ppl = [j for j in done if dataset and ((j.results.get("perplexity") or {}).get(dataset) or {}).get("sparse")]
    if with_ppl:
        fig, ax = plt.subplots(figsize=(7, 5))
        for k, job in enumerate(with_ppl):
            e = errors(job.results)
            ppl = job.results["perplexity"][dataset]["sparse"]
            colour = f"C{k % 10}"
            if "calib" in e:
                ax.scatter(e["calib"][0], ppl, marker="o", color=colour, label=f"{_label_text(job)}")
            if "held_out" in e:
                ax.scatter(e["held_out"][0], ppl, marker="^", color=colour)
            if "held_out_generated" in e:
                ax.scatter(e["held_out_generated"][0], ppl, marker="s", color=colour, facecolors="none")
            xs = [e[name][0] for name in ERRORS if name in e]
            if len(xs) > 1:
                ax.plot([min(xs), max(xs)], [ppl, ppl], ":", color=colour, linewidth=0.8)
        generated = any("held_out_generated" in errors(j.results) for j in with_ppl)
        ax.set_xlabel("reconstruction error at the last block (o calibration, ^ held-out"
                      + (", open square generated held-out)" if generated else ")"), fontsize=8 if generated else None)
        ax.set_ylabel(f"perplexity ({dataset})")
        ax.set_title("Reconstruction error against generalisation")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out / "error_vs_perplexity.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append("error_vs_perplexity.png")
    return written


def report(root: Path, jobs: Optional[list[Job]] = None) -> Path:
    """Write root/report/ from the sweep's jobs (collected here unless the caller already has them)."""
    jobs = collect(root) if jobs is None else jobs
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    datasets, rows = sweep_rows(jobs)
    md, csv_text, latex = tables(rows)
    pictures = figures(jobs, out, datasets[0] if datasets else None)
    problems = [j for j in jobs if not j.finished]
    lines = [f"# Sweep report: {root}", "", f"{len(jobs)} jobs, {len(jobs) - len(problems)} finished.", ""]
    lines += dense_lines(jobs, datasets) + [md]
    if problems:
        lines += ["## Failed or partial jobs", ""]
        lines += [f"- `{j.folder.relative_to(root)}` ({_label_text(j)}): {j.problem}" for j in problems]
        lines.append("")
    lines += [f"![{p}]({p})" for p in pictures]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "summary.csv", csv_text)
    atomic_write_text(out / "summary.tex", latex)
    log.info("Report of %d jobs (%d failed or partial) in %s", len(jobs), len(problems), out)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pruning-lab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", help="a sweep folder (outputs/multirun/DATE/TIME) or any folder of run folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        out = report(Path(args.multirun_dir).expanduser().resolve())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

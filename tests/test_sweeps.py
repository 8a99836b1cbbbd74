"""Sweeps end to end: multirun with W&B offline runs read back against results.json, a failing job
that does not stop the sweep, the report, launchers and experiment configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pruning_lab.report import main as report_main
from pruning_lab.tracking import flat_summary, read_offline_run

from .conftest import REPO

TINY = ["model=tiny_llama", "calibration.num_samples=4", "calibration.seq_len=32", "calibration.held_out_samples=2",
        "eval.perplexity.max_windows=2", "eval.perplexity.seq_len=32", "eval.zeroshot.offline.max_items=8"]


def sweep(tmp_path, *args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", **(env_extra or {}))
    root = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "pruning_lab", "-m", *TINY, *args, f"hydra.sweep.dir={root}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return proc, root


def job_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.e2e
def test_multirun_wandb_and_report(tmp_path):
    proc, root = sweep(tmp_path, "pruner=magnitude,wanda", "reconstruction=none,br", "reconstruction.epochs=1",
                       "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(root)
    assert len(jobs) == 4
    groups = set()
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        assert results["status"] == "finished"
        wb = read_offline_run(job)
        groups.add(wb["group"])
        assert wb["exit_code"] == 0 and wb["job_type"] == results["config"]["reconstruction"]["name"]
        expected = flat_summary(results)
        assert {k: wb["summary"][k] for k in expected} == pytest.approx(expected)  # the summary IS results.json
        assert wb["config"]["pruner"]["name"] == results["config"]["pruner"]["name"]
        curve = [h for h in wb["history"] if "unit/calib_after" in h]
        assert [h["block"] for h in curve] == list(range(results["model"]["num_blocks"]))
        assert [h["unit/calib_after"] for h in curve] == pytest.approx([b["recon_error"]["calib"]["after"] for b in results["blocks"]])
    assert len(groups) == 1  # one sweep, one W&B group
    assert report_main([str(root)]) == 0
    out = root / "report"
    md, csv_text = (out / "summary.md").read_text(), (out / "summary.csv").read_text()
    assert len(csv_text.strip().splitlines()) == 1 + 4 and "\\begin{tabular}" in (out / "summary.tex").read_text()
    assert "pruner" in csv_text.splitlines()[0] and "reconstruction" in csv_text.splitlines()[0]
    assert (out / "recon_error_per_block.png").stat().st_size > 1000 and (out / "error_vs_perplexity.png").stat().st_size > 1000
    assert "Failed" not in md


@pytest.mark.e2e
def test_a_failing_job_finishes_its_wandb_run_and_the_sweep_goes_on(tmp_path):
    # job 0 fails inside the pipeline (a calibration text too short for the windows asked), job 1 succeeds
    short = tmp_path / "short.txt"
    short.write_text("only a few words here. " * 3)
    proc, root = sweep(tmp_path, "logger=wandb", "calibration=text_file", f"calibration.path={short},{REPO / 'README.md'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad, good = job_dirs(root)
    r_bad, r_good = (json.loads((j / "results.json").read_text()) for j in (bad, good))
    assert r_bad["status"] == "failed" and "fewer than" in r_bad["error"] and r_good["status"] == "finished"
    assert read_offline_run(bad)["exit_code"] == 1 and read_offline_run(good)["exit_code"] == 0
    (good / "results.json").write_text("{not json")  # one bad job file never crashes the report
    assert report_main([str(root)]) == 0
    md = (root / "report" / "summary.md").read_text()
    assert "## Failed or partial jobs" in md and "status failed" in md and "unreadable results.json" in md


def test_report_bad_input(tmp_path):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2
    for i, version in enumerate((1, 2)):
        (tmp_path / "mixed" / str(i)).mkdir(parents=True)
        (tmp_path / "mixed" / str(i) / "results.json").write_text(json.dumps({"schema_version": version, "status": "finished"}))
    assert report_main([str(tmp_path / "mixed")]) == 2


def fake_job(folder: Path, overrides: list[str], calib: list[float], held: list[float], ppl: float, zs: float,
             generated: list[float] | None = None) -> None:
    """A finished job folder as pruning-lab leaves it, with hand-chosen numbers."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    blocks = []
    for i, (c, h) in enumerate(zip(calib, held)):
        err = {"calib": {"before": 2 * c, "after": c}, "held_out": {"before": 2 * h, "after": h}}
        if generated:
            err["held_out_generated"] = {"before": 1.0, "after": generated[i]}
        blocks.append({"index": i, "recon_error": err})
    (folder / "results.json").write_text(json.dumps({
        "schema_version": 1, "status": "finished", "blocks": blocks, "timing": {"total": 12.5},
        "perplexity": {"wiki": {"sparse": ppl, "dense": 20.0}}, "zeroshot": {"mean": {"sparse": zs, "dense": 0.59}}}))


def test_report_rows_are_the_jobs_numbers(tmp_path):
    """Rows are labelled by the settings that vary, hold last-block and mean errors, perplexity and
    zero-shot mean exactly; the held-out-generated column appears only when a job measured it."""
    import csv

    fake_job(tmp_path / "s" / "0", ["pruner=wanda", "reconstruction=br", "experiment=x"], [0.1, 0.3], [0.2, 0.5], 30.0, 0.45)
    fake_job(tmp_path / "s" / "1", ["pruner=wanda", "reconstruction=lr", "experiment=x"], [0.2, 0.4], [0.3, 0.7], 35.0, 0.40)
    assert report_main([str(tmp_path / "s")]) == 0
    rows = list(csv.DictReader((tmp_path / "s" / "report" / "summary.csv").read_text().splitlines()))
    assert [r["reconstruction"] for r in rows] == ["br", "lr"] and "pruner" not in rows[0]  # pruner did not vary
    assert float(rows[0]["calib error (last)"]) == 0.3 and float(rows[0]["calib error (mean)"]) == pytest.approx(0.2)
    assert float(rows[1]["held-out error (last)"]) == 0.7 and float(rows[1]["held-out error (mean)"]) == pytest.approx(0.5)
    assert float(rows[1]["ppl wiki"]) == 35.0 and float(rows[1]["zero-shot mean"]) == 0.40
    assert not any("generated" in c for c in rows[0])
    md = (tmp_path / "s" / "report" / "summary.md").read_text()
    assert "Dense model: perplexity wiki 20.00, zero-shot mean 0.5900." in md
    fake_job(tmp_path / "g" / "0", ["calibration=embedded"], [0.1], [0.2], 30.0, 0.45, generated=[0.9])
    fake_job(tmp_path / "g" / "1", ["calibration=mixed", "cache_dir=${hydra:runtime.output_dir}/cache"], [0.1], [0.2], 30.0,
             0.45, generated=[0.6])  # an interpolation in an override is a label, never resolved
    assert report_main([str(tmp_path / "g")]) == 0
    rows = list(csv.DictReader((tmp_path / "g" / "report" / "summary.csv").read_text().splitlines()))
    assert [float(r["held-out generated error (last)"]) for r in rows] == [0.9, 0.6]
    assert [r["calibration"] for r in rows] == ["embedded", "mixed"]
    assert [r["cache_dir"] for r in rows] == ["-", "${hydra:runtime.output_dir}/cache"]


def test_online_without_credentials_falls_back_to_offline(monkeypatch, tmp_path, caplog):
    from pruning_lab.tracking import resolve_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode("online") == "offline" and "no credentials" in caplog.text
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("offline") == "disabled"


@pytest.mark.e2e
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    proc, root = sweep(tmp_path, "hydra/launcher=local_submitit", "pruner=magnitude,wanda", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(root)
    assert len(jobs) == 2
    for job in jobs:
        assert json.loads((job / "results.json").read_text())["status"] == "finished"
    assert list((root / ".submitit").glob("*")), "the jobs went through submitit"


def test_missing_launcher_plugin_is_named(monkeypatch):
    import importlib.util

    from pruning_lab.cli import missing_launcher

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_submitit") else real(name, *a))
    assert missing_launcher(["hydra/launcher=slurm"]) == ("hydra/launcher=slurm needs the hydra-submitit-launcher plugin: "
                                                          "pip install hydra-submitit-launcher")
    assert missing_launcher(["pruner=wanda"]) is None


EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    """Each job of each experiment (full scale included) composes and passes validation; nothing runs."""
    import itertools

    from hydra import compose, initialize_config_dir

    from pruning_lab.cli import config_dir
    from pruning_lab.config import validate

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        base = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in base.hydra.sweeper.params.items()}
        assert base.hydra.mode.name == "MULTIRUN" and params
        jobs = [dict(zip(params, combo)) for combo in itertools.product(*params.values())]
        for job in jobs:
            cfg = validate(compose(config_name="config", overrides=[f"experiment={name}", *(f"{k}={v}" for k, v in job.items())]))
            if name.endswith("_cpu"):
                assert cfg.model.name == "smollm2_135m" and cfg.calibration.seq_len == 256
            else:
                assert cfg.model.name == "llama2_7b" and cfg.model.offload and cfg.calibration.seq_len == 1024
                assert cfg.calibration.num_samples in (8, 32, 128, 256)
    sizes = {"recon_techniques": 8, "recon_vs_generalization": 6, "self_generated": 6, "patterns": 8}
    assert len(jobs) == sizes[name.removesuffix("_cpu")]


def test_parallel_jobs_compute_a_shared_cache_item_once(tmp_path):
    """Two processes asking for the same cached value at once (as parallel launcher jobs do for the
    dense baselines): one computes it under the lock, the other waits and reads it."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pruning_lab.cache import cached_value\n"
        "root = Path(sys.argv[1])\n"
        "def compute():\n"
        "    with open(root / 'computed.log', 'a') as f:\n"
        "        f.write('once\\n')\n"
        "    time.sleep(1.5)\n"
        "    return 42.0\n"
        "value, hit = cached_value(root / 'item.json', 'ppl', ('k',), compute)\n"
        "print(value, hit)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outs == [["42.0", "False"], ["42.0", "True"]]
    assert (tmp_path / "computed.log").read_text() == "once\n"


def test_results_and_cache_items_get_ordinary_permissions(tmp_path):
    """Atomic writes go through private temporary files; what they leave behind must be readable
    like any file (a shared cache on a cluster is read by other users' jobs)."""
    import stat

    from pruning_lab.cache import atomic_directory, atomic_write_text, default_mode

    atomic_write_text(tmp_path / "results.json", "{}")
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("w")
    (tmp_path / "plain.json").write_text("{}")  # what open() and mkdir() give in this process
    (tmp_path / "plain_dir").mkdir()

    def mode(name):
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    assert mode("results.json") == mode("plain.json") == default_mode() != 0o600
    assert mode("model") == mode("plain_dir") == default_mode(directory=True) != 0o700

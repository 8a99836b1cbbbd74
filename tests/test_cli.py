"""The `pruning-lab` entry point end to end: results.json contract, bad input, determinism."""

import json
import os
import subprocess
import sys

import pytest

from pruning_lab.pipeline import run

from .conftest import compose_config

TINY = ["model=tiny_llama", "calibration.num_samples=8", "calibration.seq_len=64", "calibration.held_out_samples=2",
        "eval.perplexity.max_windows=4", "eval.perplexity.seq_len=64", "eval.zeroshot.offline.max_items=8"]


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pruning_lab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def check_contract(r, num_blocks):
    assert r["schema_version"] == 1 and r["status"] == "finished" and r["error"] is None
    assert set(r["environment"]) >= {"python", "torch", "transformers", "lm_eval", "git_sha", "device", "threads"}
    assert set(r["model"]) >= {"name_or_path", "family", "num_blocks", "fingerprint"}
    assert r["model"]["num_blocks"] == num_blocks == len(r["blocks"])
    assert set(r["calibration"]) >= {"source", "num_samples", "seq_len", "held_out_samples", "cache"}
    for i, b in enumerate(r["blocks"]):
        assert b["index"] == i and set(b) >= {"sparsity", "recon_error", "seconds"}
    assert set(r["sparsity"]) >= {"overall", "pattern"}
    for p in r["perplexity"].values():
        assert set(p) >= {"sparse", "dense", "windows", "seq_len"}
    assert set(r["timing"]) >= {"load", "calibration", "prune", "reconstruct", "eval", "total"}
    assert set(r["memory"]) >= {"peak_rss_gb", "peak_gpu_gb"}


def test_cli_tiny_run_writes_results(tmp_path):
    out = tmp_path / "run"
    proc = cli(*TINY, "pruner=wanda", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    check_contract(r, 4)
    assert all(b["sparsity"] == pytest.approx(0.5) for b in r["blocks"])
    assert r["config"]["pruner"]["name"] == "wanda" and r["sparsity"]["pattern"] == "unstructured"
    assert "perplexity" in proc.stderr + proc.stdout  # the summary table


@pytest.mark.parametrize("args,message", [
    (["sparsity.ratio=1.5"], "sparsity.ratio=1.5 must lie in [0, 1)"),
    (["pruner=wanda", "sparsity=nm", "sparsity.n=2", "sparsity.m=5"], "sparsity.m=5 does not divide the input size 64 of layer model.layers.0.self_attn.q_proj"),
    (["calibration.num_samples=2000"], "fewer than the 2000 x 64"),
    (["model.tiny.model_type=gpt2"], "model family 'gpt2' has no adapter"),
])
def test_cli_bad_input_fails_early_and_clearly(tmp_path, args, message):
    out = tmp_path / "run"
    proc = cli(*TINY, *args, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    if (out / "results.json").exists():
        r = json.loads((out / "results.json").read_text())
        assert r["status"] == "failed" and message in r["error"] and r["blocks"] == []


def test_cli_unknown_group_option(tmp_path):
    proc = cli("pruner=wandaa", cwd=tmp_path)
    assert proc.returncode != 0 and "wandaa" in proc.stderr and "sparsegpt" in proc.stderr


def test_same_seed_same_masks_and_metrics(tmp_path):
    a = run(compose_config(*TINY, "pruner=sparsegpt", "seed=3"), tmp_path / "a", progress=False)
    b = run(compose_config(*TINY, "pruner=sparsegpt", "seed=3"), tmp_path / "b", progress=False)
    c = run(compose_config(*TINY, "pruner=sparsegpt", "seed=4"), tmp_path / "c", progress=False)
    assert a["perplexity"] == b["perplexity"] and a["blocks"][-1]["layers"] == b["blocks"][-1]["layers"]
    assert a["perplexity"]["embedded_wiki"]["sparse"] != c["perplexity"]["embedded_wiki"]["sparse"]


def test_opt_family_end_to_end(tmp_path):
    r = run(compose_config(*TINY, "model=tiny_opt", "pruner=sparsegpt", "sparsity=nm_2_4"), tmp_path, progress=False)
    assert r["model"]["family"] == "opt" and r["sparsity"]["pattern"] == "2:4"
    assert all(b["sparsity"] >= 0.5 for b in r["blocks"])


@pytest.mark.e2e
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_embedded_model_every_block_pruned(tmp_path, pruner):
    """The real embedded model (30 blocks), small calibration: every block pruned to exactly 50%."""
    small = ["calibration.num_samples=8", "calibration.seq_len=128", "calibration.held_out_samples=2",
             "eval.perplexity.max_windows=4", "eval.perplexity.seq_len=256"]
    r = run(compose_config(*small, f"pruner={pruner}"), tmp_path, progress=False)
    check_contract(r, 30)
    assert all(b["sparsity"] == pytest.approx(0.5, abs=1e-9) for b in r["blocks"])
    assert all(b["skipped"] == [] and len(b["layers"]) == 7 for b in r["blocks"])
    ppl = r["perplexity"]["embedded_wiki"]
    assert 5 < ppl["dense"] < 60 and ppl["sparse"] > ppl["dense"]


@pytest.mark.e2e
def test_embedded_model_dense_run_and_offload(tmp_path):
    small = ["eval.perplexity.max_windows=2", "eval.perplexity.seq_len=128", "pruner=none"]
    a = run(compose_config(*small), tmp_path / "a", progress=False)
    b = run(compose_config(*small, "model.offload=true"), tmp_path / "b", progress=False)
    pa, pb = a["perplexity"]["embedded_wiki"], b["perplexity"]["embedded_wiki"]
    assert pa["sparse"] == pytest.approx(pa["dense"], rel=1e-6) and pb["sparse"] == pytest.approx(pa["sparse"], rel=1e-5)


def test_interrupted_run_resumes_in_the_same_folder(tmp_path, monkeypatch):
    """A run killed after two blocks, rerun in the same folder, ends as an uninterrupted run."""
    from pruning_lab.engine import SequentialPruner

    args = [*TINY, "reconstruction=br_gp_cr", "reconstruction.epochs=1"]
    reference = run(compose_config(*args), tmp_path / "reference", progress=False)

    real = SequentialPruner.run_unit

    def dying(self, i, last):
        if i == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(self, i, last)

    monkeypatch.setattr(SequentialPruner, "run_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(*args), tmp_path / "run", progress=False)
    partial = json.loads((tmp_path / "run" / "results.json").read_text())
    assert partial["status"] == "failed" and len(partial["blocks"]) == 2
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()

    monkeypatch.setattr(SequentialPruner, "run_unit", real)
    resumed = run(compose_config(*args, f"resume={tmp_path / 'run'}"), None, progress=False)
    assert resumed["status"] == "finished"
    assert resumed["perplexity"] == reference["perplexity"]
    assert [b["recon_error"] for b in resumed["blocks"]] == [b["recon_error"] for b in reference["blocks"]]
    assert resumed["recon_error_output"] == reference["recon_error_output"]
    assert not (tmp_path / "run" / "checkpoint").exists()  # cleared once the run is complete


def test_resume_with_another_config_is_refused_before_work(tmp_path, monkeypatch):
    from pruning_lab.engine import SequentialPruner

    args = [*TINY, "reconstruction=br", "reconstruction.epochs=1"]
    real = SequentialPruner.run_unit
    calls = {"n": 0}

    def one_unit(self, i, last):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("simulated kill")
        return real(self, i, last)

    monkeypatch.setattr(SequentialPruner, "run_unit", one_unit)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(*args), tmp_path / "run2", progress=False)  # killed after one finished unit
    from pruning_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"keys that differ: reconstruction.lr: 0.0002 -> 0.001"):
        run(compose_config(*args, "reconstruction.lr=1e-3", f"resume={tmp_path / 'run2'}"), None, progress=False)

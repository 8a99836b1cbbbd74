"""Reconstruction with masks frozen (LR / BR / BR+GP / BR+GP+CR) on tiny random models."""

import copy

import pytest
import torch
from omegaconf import OmegaConf

from pruning_lab import blockwise
from pruning_lab import engine as engine_module
from pruning_lab.adapters import adapter_for
from pruning_lab.checkpoint import Checkpointer
from pruning_lab.engine import EngineOptions, SequentialPruner
from pruning_lab.errors import ConfigError
from pruning_lab.patterns import SparsityPattern
from pruning_lab.streams import StreamAllocator

from .conftest import compose_config, tiny_model

CPU = torch.device("cpu")
PRESETS = ["lr", "br", "br_gp", "br_gp_cr"]


def windows(n, seed):
    return torch.randint(0, 96, (n, 16), generator=torch.Generator().manual_seed(seed))


CALIB, HELD, VAL = windows(8, 0), windows(4, 1), windows(4, 2)


def recon_cfg(preset, **over):
    cfg = compose_config(f"reconstruction={preset}").reconstruction
    cfg = OmegaConf.merge(cfg, {"epochs": 2, "batch_size": 4, "lr": 1e-3, **over})
    return cfg


def run_engine(model, preset="none", measure=True, streams=None, checkpointer=None, on_block=None, val=False, **over):
    pruner = OmegaConf.create({"name": "sparsegpt", "blocksize": 128, "percdamp": 0.01})
    opts = EngineOptions(recon=recon_cfg(preset, **over), measure_error=measure, seed=0)
    eng = SequentialPruner(model, adapter_for(model), SparsityPattern("unstructured", 0.5), pruner, [], CPU, False, 4,
                           on_block=on_block, progress=False, options=opts, streams=streams, checkpointer=checkpointer)
    records = eng.run(CALIB, HELD, VAL if val else None)
    return eng, records


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def linear_weights(model):
    a = adapter_for(model)
    return {(i, n): lin.weight for i, b in enumerate(a.blocks(model)) for n, lin in a.all_linears(b).items()}


@pytest.mark.parametrize("preset", PRESETS)
def test_masks_stay_zero_and_survivors_train(preset):
    base = tiny_model("llama", layers=3)
    none_model = copy.deepcopy(base)
    run_engine(none_model, "none")
    model = copy.deepcopy(base)
    eng, records = run_engine(model, preset)
    changed = 0
    for (i, name), w in linear_weights(model).items():
        mask = eng.masks[i][name]
        assert (w[~mask] == 0).all(), (i, name)
        assert int((~mask).sum()) == w.numel() // 2  # the pruner's exact count, untouched
        changed += int((w[mask] != linear_weights(none_model)[(i, name)][mask]).sum())
    assert changed > 0  # reconstruction did move the surviving weights
    assert [r.index for r in records] == [0, 1, 2] and all(r.sparsity == pytest.approx(0.5) for r in records)


def test_none_changes_nothing_beyond_the_pruner_and_measuring_changes_nothing():
    a, b, c = tiny_model("opt"), tiny_model("opt"), tiny_model("opt")
    SequentialPruner(a, adapter_for(a), SparsityPattern("unstructured", 0.5),
                     OmegaConf.create({"name": "sparsegpt", "blocksize": 128, "percdamp": 0.01}), [], CPU, False, 4,
                     progress=False).run(CALIB)
    run_engine(b, "none", measure=True)
    run_engine(c, "none", measure=False)
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)


def test_br_with_zero_epochs_equals_none():
    a, b = tiny_model("llama"), tiny_model("llama")
    _, ra = run_engine(a, "none")
    _, rb = run_engine(b, "br", epochs=0)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r.recon_error["calib"]["after"] for r in ra] == [r.recon_error["calib"]["after"] for r in rb]


def test_more_epochs_lower_the_calibration_error():
    errors = []
    for epochs in (1, 4, 16):
        m = tiny_model("llama", layers=1)
        _, rec = run_engine(m, "br", epochs=epochs)
        e = rec[0].recon_error["calib"]
        assert e["after"] < e["before"]
        errors.append(e["after"])
    assert errors[0] > errors[1] > errors[2]


def dense_block_outputs(model, x):
    """Hand-built targets: every block's output in a plain forward of the dense model."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
             for b in adapter_for(model).blocks(model)]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return outs


def spy_targets(monkeypatch) -> dict:
    """Record every unit's full target as the engine hands it to the optimiser, by unit name."""
    seen = {}
    real = engine_module.optimise

    def spy(unit, masks, data, cfg, seed, device, desc, progress=True):
        seen[desc] = data.target(torch.arange(data.n))
        return real(unit, masks, data, cfg, seed, device, desc, progress)

    monkeypatch.setattr(engine_module, "optimise", spy)
    return seen


@pytest.mark.parametrize("preset,offset", [("br_gp", 0), ("br_gp_cr", 1)])
def test_global_target_is_the_dense_stream(monkeypatch, preset, offset):
    model = tiny_model("llama", layers=3)
    expected = dense_block_outputs(copy.deepcopy(model), CALIB)
    seen = spy_targets(monkeypatch)
    run_engine(model, preset)
    assert len(seen) == 3 - offset
    for i, (_desc, target) in enumerate(sorted(seen.items())):
        torch.testing.assert_close(target, expected[i + offset], rtol=1e-5, atol=1e-5)


def test_local_target_is_the_dense_block_on_the_sparse_input(monkeypatch):
    base = tiny_model("llama", layers=3)
    seen = spy_targets(monkeypatch)
    model = copy.deepcopy(base)
    run_engine(model, "br")
    # the sparse-stream input of block 2 is what the final pruned model feeds it
    sparse_inputs = []
    h = adapter_for(model).blocks(model)[2].register_forward_pre_hook(lambda m, a: sparse_inputs.append(a[0]))
    with torch.no_grad():
        model(input_ids=CALIB)
    h.remove()
    # hand-built target: the dense block 2 (from the untouched model) on that input
    blocks_base = adapter_for(base).blocks(base)
    kwargs = blockwise.capture(base, blocks_base, CALIB[:1], 1, CPU, CPU).kwargs[2]
    with torch.no_grad():
        hand = blockwise.call_block(blocks_base[2], sparse_inputs[0], kwargs)
    torch.testing.assert_close(seen["reconstructing block 2"], hand, rtol=1e-5, atol=1e-5)


def test_cross_block_trains_every_interior_block_twice():
    model = tiny_model("llama", layers=4)
    _, records = run_engine(model, "br_gp_cr")
    assert [len(r.optimised) for r in records] == [1, 2, 2, 1]
    assert [[u["unit"] for u in r.optimised] for r in records] == [[0], [0, 1], [1, 2], [2]]


def test_layer_wise_trains_each_linear():
    model = tiny_model("llama", layers=2)
    _, records = run_engine(model, "lr")
    assert sorted(u["layer"] for u in records[0].optimised) == sorted(adapter_for(model).all_linears(adapter_for(model).blocks(model)[0]))


def test_memory_mapped_streams_give_identical_results(tmp_path):
    a, b = tiny_model("llama"), tiny_model("llama")
    _, ra = run_engine(a, "br_gp_cr")
    alloc = StreamAllocator(1e-9, tmp_path / "streams", CPU)
    _, rb = run_engine(b, "br_gp_cr", streams=alloc)
    assert alloc.mapped
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r.recon_error for r in ra] == [r.recon_error for r in rb]


class Killed(Exception):
    pass


@pytest.mark.parametrize("preset,kill_after", [("br_gp", 1), ("br_gp_cr", 1), ("lr", 0)])
def test_resume_after_a_kill_gives_identical_results(tmp_path, preset, kill_after):
    reference = tiny_model("llama", layers=4)
    _, ref_records = run_engine(reference, preset)

    def killer(record):
        if record.index == kill_after:
            raise Killed

    ck = Checkpointer(tmp_path / "ck", {"x": 1})
    victim = tiny_model("llama", layers=4)
    with pytest.raises(Killed):
        run_engine(victim, preset, checkpointer=ck, on_block=killer)
    fresh = tiny_model("llama", layers=4)  # a new process: the dense model loaded again
    _, records = run_engine(fresh, preset, checkpointer=Checkpointer(tmp_path / "ck", {"x": 1}))
    wr, wf = weights(reference), weights(fresh)
    assert all(torch.equal(wr[k], wf[k]) for k in wr)
    strip = lambda rs: [{k: v for k, v in r.to_json().items() if k not in ("seconds", "optimised")} for r in rs]
    assert strip(records) == strip(ref_records)


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    ck = Checkpointer(tmp_path / "ck", {"reconstruction": {"epochs": 2, "lr": 1e-3}, "seed": 0})
    ck.save({"final_blocks": {}, "next_unit": 1})
    other = Checkpointer(tmp_path / "ck", {"reconstruction": {"epochs": 3, "lr": 1e-3}, "seed": 0, "threads": 4})
    with pytest.raises(ConfigError, match=r"keys that differ: reconstruction.epochs: 2 -> 3"):
        other.check_config()


def test_nonfinite_loss_restores_weights_and_is_recorded(monkeypatch, caplog):
    import pruning_lab.reconstruction as rec_module

    real = rec_module.F.mse_loss
    calls = {"n": 0}

    class Shim:
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        @staticmethod
        def mse_loss(a, b, **kw):
            calls["n"] += 1
            out = real(a, b, **kw)
            return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(rec_module, "F", Shim())
    before = tiny_model("llama", layers=1)
    pruned_only = copy.deepcopy(before)
    run_engine(pruned_only, "none")
    model = copy.deepcopy(before)
    _, records = run_engine(model, "br", epochs=3)
    report = records[0].optimised[0]
    assert report["nonfinite"] and report["steps"] == 2
    assert "loss became nan" in caplog.text
    wp, wm = weights(pruned_only), weights(model)
    assert all(torch.equal(wp[k], wm[k]) for k in wp)  # restored to the pruner's weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_keeps_the_best_weights():
    model = tiny_model("llama", layers=1)
    _, records = run_engine(model, "br", epochs=6, lr=5e-2, early_stop=True, patience=1, val=True)
    report = records[0].optimised[0]
    vals = report["val_losses"]
    assert len(vals) >= 2  # before training + one per epoch run
    if report["stopped_early"]:
        assert report["epochs"] < 6 and vals[-1] >= min(vals)
    assert report["best_epoch"] is None or vals[report["best_epoch"]] == min(vals)


@pytest.mark.parametrize("overrides,message", [
    (["reconstruction=br", "reconstruction.epochs=-1"], "reconstruction.epochs=-1 must be >= 0"),
    (["reconstruction=br", "reconstruction.lr=-0.1"], "reconstruction.lr=-0.1 must be positive"),
    (["reconstruction=lr", "reconstruction.target=global"], "granularity=layer with reconstruction.target=global is not supported"),
    (["reconstruction=br_gp_cr", "reconstruction.target=local"], "not supported"),
    (["reconstruction=br", "reconstruction.early_stop=true"], "needs calibration.val_samples > 0"),
    (["reconstruction=br", "reconstruction.trainable=[norms,embeddings]"], "unknown entries ['embeddings']"),
])
def test_bad_reconstruction_config(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose_config(*overrides)
    assert message in str(err.value)


def test_window_larger_than_the_model():
    with pytest.raises(ConfigError, match="reconstruction.window=5 is larger than the model's 3 blocks"):
        run_engine(tiny_model("llama", layers=3), "br_gp_cr", window=5)

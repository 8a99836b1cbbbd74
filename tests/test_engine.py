"""The sequential engine on tiny random models of several families."""

import pytest
import torch
from omegaconf import OmegaConf

from pruning_lab import blockwise
from pruning_lab.adapters import adapter_for
from pruning_lab.engine import SequentialPruner
from pruning_lab.patterns import SparsityPattern, num_pruned
from pruning_lab.perplexity import perplexity

from .conftest import FAMILIES, tiny_model

CPU = torch.device("cpu")


def ids(n=6, t=24, vocab=96, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


HALF = SparsityPattern("unstructured", 0.5)


def prune(model, pruner="sparsegpt", pattern=HALF, x=None, offload=False, skip=(),
          batch_size=4):
    adapter = adapter_for(model)
    cfg = OmegaConf.create({"name": pruner, "blocksize": 128, "percdamp": 0.01})
    engine = SequentialPruner(model, adapter, pattern, cfg, list(skip), CPU, offload, batch_size, progress=False)
    return engine.run(ids() if x is None else x)


def masks(model):
    adapter = adapter_for(model)
    return {f"{i}.{n}": (lin.weight != 0) for i, b in enumerate(adapter.blocks(model))
            for n, lin in adapter.all_linears(b).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_blockwise_forward_matches_full_forward(family):
    """Captured kwargs + block-by-block propagation + the model's own head == one plain forward."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    x = ids()
    with torch.no_grad():
        reference = model(input_ids=x).logits
    inputs = blockwise.capture(model, blocks, x, batch_size=4, device=CPU, storage=CPU)
    h = inputs.hidden
    for i, block in enumerate(blocks):
        h = blockwise.propagate(block, h, inputs.kwargs[i], batch_size=4, device=CPU)
    logits = blockwise.head(model, blocks, x, h, CPU)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_every_block_pruned_exactly(family, pruner):
    model = tiny_model(family)
    records = prune(model, pruner)
    adapter = adapter_for(model)
    assert [r.index for r in records] == list(range(len(adapter.blocks(model))))
    for i, block in enumerate(adapter.blocks(model)):
        for name, lin in adapter.all_linears(block).items():
            zeros_per_row = (lin.weight == 0).sum(1)
            if pruner == "wanda":  # per output row
                assert (zeros_per_row == num_pruned(lin.in_features, 0.5)).all(), (i, name)
            else:  # per layer (SparseGPT: per column block, which here is the whole layer)
                assert int(zeros_per_row.sum()) == num_pruned(lin.weight.numel(), 0.5), (i, name)
        assert records[i].sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_nm_every_group(family, pruner):
    model = tiny_model(family)
    prune(model, pruner, SparsityPattern("nm", n=2, m=4))
    for name, keep in masks(model).items():
        zeros = (~keep).reshape(keep.shape[0], -1, 4).sum(-1)
        if family == "opt" and pruner == "sparsegpt" and name.endswith("fc2"):
            # OPT's ReLU leaves some fc2 inputs silent on the calibration data; SparseGPT zeroes the
            # weights of such dead inputs (as the reference does): whole columns, beyond the N:M mask
            dead_cols = (~keep).all(0)
            assert dead_cols.any() and (zeros >= 2).all(), name
            live = ~dead_cols.reshape(-1, 4).any(-1)
            assert (zeros[:, live] == 2).all(), name
        else:
            assert (zeros == 2).all(), name


def test_only_block_linears_change():
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    prune(model, "wanda")
    for n, p in model.named_parameters():
        is_block_linear = ".layers." in n and n.endswith("proj.weight")
        assert torch.equal(p, before[n]) != is_block_linear, n


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_sparsity_zero_changes_nothing(pruner):
    model = tiny_model("llama")
    x = ids()
    with torch.no_grad():
        reference = model(input_ids=x).logits
    prune(model, pruner, SparsityPattern("unstructured", 0.0), x=x)
    with torch.no_grad():
        after = model(input_ids=x).logits
    if pruner == "sparsegpt":
        # no weight is pruned, so the OBS update has no error to spread: weights stay as they were
        torch.testing.assert_close(after, reference, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(after, reference)


def test_skip_patterns_leave_layers_dense():
    model = tiny_model("llama")
    records = prune(model, "magnitude", skip=["*.down_proj", "model.layers.0.self_attn.q_proj"])
    m = masks(model)
    assert all(m[f"{i}.mlp.down_proj"].all() for i in range(3))
    assert m["0.self_attn.q_proj"].all() and not m["1.self_attn.q_proj"].all()
    assert "mlp.down_proj" in records[0].skipped


def test_same_input_same_masks_and_offload_agrees():
    a, b, c = tiny_model("llama"), tiny_model("llama"), tiny_model("llama")
    prune(a, "sparsegpt")
    prune(b, "sparsegpt")
    prune(c, "sparsegpt", offload=True)
    ma, mb, mc = masks(a), masks(b), masks(c)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(ma[k], mc[k]) for k in ma)
    for (n, p), q in zip(a.named_parameters(), c.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_batch_size_does_not_change_masks():
    a, b = tiny_model("opt"), tiny_model("opt")
    prune(a, "wanda", batch_size=1)
    prune(b, "wanda", batch_size=6)
    ma, mb = masks(a), masks(b)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_offloaded_perplexity_equals_in_memory():
    model = tiny_model("gpt_neox")
    adapter = adapter_for(model)
    x = ids(n=5)
    direct = perplexity(model, adapter, x, batch_size=2, device=CPU, offload=False, progress=False)
    offloaded = perplexity(model, adapter, x, batch_size=2, device=CPU, offload=True, progress=False)
    assert offloaded == pytest.approx(direct, rel=1e-5)


def test_hessian_shared_between_layers_reading_one_input():
    from pruning_lab.statistics import InputStatistics

    model = tiny_model("llama", layers=1)
    adapter = adapter_for(model)
    block = adapter.blocks(model)[0]
    linears = adapter.prunable_linears(block, 0)
    inputs = blockwise.capture(model, adapter.blocks(model), ids(), 3, CPU, CPU)
    stats = InputStatistics(linears, "hessian")
    with torch.no_grad(), stats.hooked():
        for sl in blockwise.batches(6, 3):
            blockwise.call_block(block, inputs.hidden[sl], inputs.kwargs[0])
            stats.end_call()
    # q/k/v share one input, gate/up another; o and down have their own
    assert stats.distinct_inputs() == 4
    assert stats.acc["self_attn.q_proj"] is stats.acc["self_attn.v_proj"]
    # and the shared accumulator equals X^T X of q_proj's input computed directly
    captured = []
    h = linears["self_attn.q_proj"].register_forward_pre_hook(lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        blockwise.call_block(block, inputs.hidden, inputs.kwargs[0])
    h.remove()
    X = torch.cat(captured)
    torch.testing.assert_close(stats.acc["self_attn.q_proj"], X.T @ X, rtol=1e-4, atol=1e-4)
    assert stats.tokens["self_attn.q_proj"] == 6 * 24

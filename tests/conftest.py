import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache for the whole session (the embedded model is dequantised once); an existing
    PRUNING_LAB_CACHE is reused so repeated local runs stay fast."""
    path = os.environ.get("PRUNING_LAB_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["PRUNING_LAB_CACHE"] = path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
    # W&B is the default logger; tests that are not about it skip it (tests/test_sweeps.py turns it on)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    return Path(path)


def tiny_model(family: str, layers: int = 3, hidden: int = 32, vocab: int = 96, seed: int = 0):
    """A random causal LM of the given family, small enough for exact checks on CPU."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=256)
    if family == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, **common)
    elif family == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, **common)
    elif family == "opt":
        cfg = OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden, word_embed_proj_dim=hidden, **common)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, **common)
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    # random init leaves biases and norms at trivial values; perturb them so every path matters
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


FAMILIES = ["llama", "opt", "gpt_neox", "qwen2"]


@pytest.fixture(scope="session")
def embedded_tokenizer(shared_cache):
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from pruning_lab.cli import config_dir
    from pruning_lab.models import embedded_model_folder

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config")
    return AutoTokenizer.from_pretrained(embedded_model_folder(cfg.model, shared_cache))


# the zero-shot evaluation runs in every pipeline test, on 8 items per offline task unless a test sets
# its own eval.zeroshot keys (the default 100 would add about a minute per embedded-model run)
SMALL_ZEROSHOT = "eval.zeroshot.offline.max_items=8"


def compose_config(*overrides):
    from hydra import compose, initialize_config_dir

    from pruning_lab.cli import config_dir
    from pruning_lab.config import validate

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        if not any(o.startswith(("eval.zeroshot", "eval=")) for o in overrides):
            overrides = (*overrides, SMALL_ZEROSHOT)
        return validate(compose(config_name="config", overrides=list(overrides)))

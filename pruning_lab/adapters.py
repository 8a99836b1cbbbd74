"""Model-family adapters: where the transformer blocks live and which of their layers are prunable.

The engine never names a family. An adapter is the dotted path of the block list; prunable layers
are every `nn.Linear` inside a block (attention and MLP projections), so embeddings, norms and the
LM head are never touched. How to call a block is not written here at all: the keyword arguments
are captured from the model's own forward (see `blockwise.py`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError

# model_type -> dotted path of the ModuleList of decoder blocks
BLOCK_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "phi3": "model.layers",
    "olmo2": "model.layers",
    "opt": "model.decoder.layers",
    "gpt_neox": "gpt_neox.layers",
}


@dataclass(frozen=True)
class Adapter:
    family: str
    blocks_path: str

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def block_name(self, index: int) -> str:
        return f"{self.blocks_path}.{index}"

    def prunable_linears(self, block: nn.Module, index: int, skip: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Linear]:
        """Linear layers of one block by in-block name, minus those matching a `sparsity.skip`
        pattern (matched against both `self_attn.q_proj` and `model.layers.3.self_attn.q_proj`)."""
        found = {}
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                full = f"{self.block_name(index)}.{name}"
                if not any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(full, pat) for pat in skip):
                    found[name] = module
        return found

    def all_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def adapter_for(model: nn.Module) -> Adapter:
    family = getattr(model.config, "model_type", None)
    if family not in BLOCK_PATHS:
        raise ConfigError(
            f"model family {family!r} has no adapter (supported: {', '.join(sorted(BLOCK_PATHS))}). "
            "Add its block-list path to BLOCK_PATHS in pruning_lab/adapters.py."
        )
    adapter = Adapter(family, BLOCK_PATHS[family])
    try:
        blocks = adapter.blocks(model)
    except AttributeError as exc:
        raise ConfigError(f"model family {family!r}: expected its blocks at `{adapter.blocks_path}` ({exc}).") from exc
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(f"model family {family!r}: `{adapter.blocks_path}` is not a non-empty list of blocks.")
    return adapter

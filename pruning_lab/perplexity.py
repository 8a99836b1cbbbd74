"""Perplexity on non-overlapping windows from the start of a tokenized text.

The model is evaluated as it is in memory; with `offload` its blocks run one at a time through the
same machinery the pruning engine uses. Evaluation never knows how the model was pruned.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from . import blockwise, corpora
from .adapters import Adapter
from .calibration import hub_root, tokenize
from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class EvalText:
    name: str
    windows: torch.Tensor  # [W, T]
    identity: str  # what the dense-baseline cache key needs to know about the text


def eval_text(name: str, cfg: DictConfig, cache_dir: Path) -> tuple[str, str]:
    """(text, identity) of a perplexity dataset: a known name or a UTF-8 file path."""
    if name == "embedded_wiki":
        return corpora.embedded_wiki_text(cache_dir), "embedded_wiki-v2"
    if name == "wikitext2":
        root = hub_root(cfg, "wikitext2")
        return corpora.wikitext_join(corpora.hub_documents("wikitext2", "test", root, "datasets.wikitext2")), f"wikitext2:{root}"
    if name == "c4":
        root = hub_root(cfg, "c4")
        docs = corpora.hub_documents("c4", "validation", root, "datasets.c4", max_docs=1100)
        return corpora.DOC_SEPARATOR.join(docs), f"c4:{root}"
    text = corpora.read_text_file(name, "eval.perplexity.datasets")
    import hashlib

    return text, f"file:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def eval_windows(name: str, cfg: DictConfig, tokenizer, cache_dir: Path) -> EvalText:
    p = cfg.eval.perplexity
    text, identity = eval_text(name, cfg, cache_dir)
    tokens = tokenize(tokenizer, text)
    count = min(p.max_windows, len(tokens) // p.seq_len)
    if count == 0:
        raise ConfigError(f"eval.perplexity.datasets: {name} has {len(tokens)} tokens, fewer than one window of "
                          f"eval.perplexity.seq_len={p.seq_len}.")
    if count < p.max_windows:
        log.warning("%s holds %d windows of %d tokens, fewer than eval.perplexity.max_windows=%d",
                    name, count, p.seq_len, p.max_windows)
    return EvalText(name, tokens[: count * p.seq_len].reshape(count, p.seq_len), identity)


def _nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1).to(logits.device),
                           reduction="sum").item()


@torch.no_grad()
def perplexity(model, adapter: Adapter, windows: torch.Tensor, batch_size: int, device: torch.device,
               offload: bool, desc: str = "perplexity", progress: bool = True) -> float:
    """exp(mean next-token NLL) over all predicted tokens of all windows."""
    total = 0.0
    slices = blockwise.batches(len(windows), batch_size)
    if not offload:
        for sl in tqdm(slices, desc=desc, unit="batch", disable=not progress):
            total += _nll_sum(model(input_ids=windows[sl].to(device), use_cache=False).logits, windows[sl])
    else:
        blocks = adapter.blocks(model)
        runner = blockwise.BlockRunner(blocks, device, offload=True)
        inputs = blockwise.capture(model, blocks, windows, batch_size, device, torch.device("cpu"))
        x = inputs.hidden
        for i in tqdm(range(len(blocks)), desc=f"{desc} (offloaded blocks)", unit="block", disable=not progress):
            with runner.on_device(i) as block:
                blockwise.propagate(block, x, blockwise.to_device(inputs.kwargs[i], device), batch_size, device, out=x)
        for sl in slices:
            total += _nll_sum(blockwise.head(model, blocks, windows[sl], x[sl], device), windows[sl])
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))

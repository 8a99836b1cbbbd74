"""Calibration windows: [N, seq_len] token ids cut at random starts from a source's text, plus
held-out windows from text that pruning never sees (other documents, or a text file's last tokens)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from . import corpora
from .errors import ConfigError

log = logging.getLogger(__name__)

HUB_ROOTS = {"c4": "hf://datasets/allenai/c4", "wikitext2": "hf://datasets/Salesforce/wikitext"}
C4_DOCS = 20000  # C4 documents read for calibration: ~9M tokens, far more than any window set needs


@dataclass
class CalibrationSet:
    source: str
    windows: torch.Tensor  # [N, T] int64
    held_out: torch.Tensor  # [H, T] int64
    val: torch.Tensor  # [V, T] int64: early-stopping windows from a slice of the calibration text
    tokens_available: int
    held_out_tokens_available: int

    def summary(self) -> dict:
        return {"num_samples": int(self.windows.shape[0]), "seq_len": int(self.windows.shape[1]),
                "held_out_samples": int(self.held_out.shape[0]), "val_samples": int(self.val.shape[0]),
                "tokens_available": self.tokens_available,
                "held_out_tokens_available": self.held_out_tokens_available}


def hub_root(cfg: DictConfig, name: str) -> str:
    return (cfg.get("datasets") or {}).get(name) or HUB_ROOTS[name]


def source_texts(cfg: DictConfig, cache_dir: Path) -> tuple[str, str]:
    """(calibration text, held-out text) of the configured source."""
    c = cfg.calibration
    sep = corpora.DOC_SEPARATOR
    if c.source == "embedded":
        docs = corpora.split_documents("embedded", corpora.embedded_news(cache_dir), c.held_out_fraction)
        return sep.join(docs.calibration), sep.join(docs.held_out)
    if c.source == "c4":
        root = hub_root(cfg, "c4")
        train = corpora.hub_documents("c4", "train", root, "datasets.c4", max_docs=C4_DOCS)
        val = corpora.hub_documents("c4", "validation", root, "datasets.c4", max_docs=C4_DOCS // 4)
        return sep.join(train), sep.join(val)
    if c.source == "wikitext2":
        root = hub_root(cfg, "wikitext2")
        train = corpora.hub_documents("wikitext2", "train", root, "datasets.wikitext2")
        val = corpora.hub_documents("wikitext2", "validation", root, "datasets.wikitext2")
        return corpora.wikitext_join(train), corpora.wikitext_join(val)
    if c.source == "text_file":
        return corpora.read_text_file(c.path, "calibration.path"), ""
    raise ConfigError(f"calibration.source={c.source!r} is unknown.")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    if not text:
        return torch.zeros(0, dtype=torch.long)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def random_windows(tokens: torch.Tensor, count: int, seq_len: int, generator: torch.Generator, what: str,
                   key: str) -> torch.Tensor:
    if count == 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    if len(tokens) < count * seq_len:
        raise ConfigError(
            f"{what} has {len(tokens)} tokens, fewer than the {count} x {seq_len} = {count * seq_len} asked for "
            f"({key}); ask for fewer or shorter windows, or use a larger source."
        )
    starts = torch.randint(0, len(tokens) - seq_len + 1, (count,), generator=generator)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def build_calibration(cfg: DictConfig, tokenizer, cache_dir: Path) -> CalibrationSet:
    c = cfg.calibration
    calib_text, held_text = source_texts(cfg, cache_dir)
    tokens = tokenize(tokenizer, calib_text)
    if not held_text:  # a single text: its last held_out_fraction of tokens is held out
        cut = len(tokens) - int(len(tokens) * c.held_out_fraction)
        tokens, held = tokens[:cut], tokens[cut:]
    else:
        held = tokenize(tokenizer, held_text)
    val_tokens = torch.zeros(0, dtype=torch.long)
    if c.val_samples:  # the last tenth of the calibration text is kept for validation windows
        cut = len(tokens) - max(len(tokens) // 10, c.seq_len)
        tokens, val_tokens = tokens[:cut], tokens[cut:]
    g = torch.Generator().manual_seed(int(c.seed))
    windows = random_windows(tokens, c.num_samples, c.seq_len, g, f"calibration source {c.source!r}",
                             "calibration.num_samples x calibration.seq_len")
    g_held = torch.Generator().manual_seed(int(c.seed) + 1)
    held_windows = random_windows(held, c.held_out_samples, c.seq_len, g_held,
                                  f"the held-out part of calibration source {c.source!r}",
                                  "calibration.held_out_samples x calibration.seq_len")
    val_windows = random_windows(val_tokens, c.val_samples, c.seq_len, torch.Generator().manual_seed(int(c.seed) + 2),
                                 f"the validation slice of calibration source {c.source!r}",
                                 "calibration.val_samples x calibration.seq_len")
    log.info("Calibration: %d windows of %d tokens from %s (%d tokens), %d held-out windows (%d tokens)",
             len(windows), c.seq_len, c.source, len(tokens), len(held_windows), len(held))
    return CalibrationSet(c.source, windows, held_windows, val_windows, len(tokens), len(held))

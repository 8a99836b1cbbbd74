"""Calibration windows: [N, seq_len] token ids cut at random starts from a real source's text, or
sampled from the dense model (self-generated), or both (mixed); plus held-out windows from real text
that pruning never sees (other documents, or a text file's last tokens)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import corpora
from .config import real_source
from .errors import ConfigError
from .generation import cached_generate, settings

log = logging.getLogger(__name__)

HUB_ROOTS = {"c4": "hf://datasets/allenai/c4", "wikitext2": "hf://datasets/Salesforce/wikitext",
             "redpajama": "hf://datasets/togethercomputer/RedPajama-Data-1T-Sample"}
C4_DOCS = 20000  # C4 documents read for calibration: ~9M tokens, far more than any window set needs
REDPAJAMA_DOCS = 4000  # per subset of the RedPajama sample
HELD_OUT_GENERATED_SEED = 1_000_003  # added to the generation seed for the held-out generated samples


@dataclass
class CalibrationSet:
    source: str
    windows: torch.Tensor  # [N, T] int64: the real part first, then the self-generated part
    held_out: torch.Tensor  # [H, T] int64: real text pruning never sees
    val: torch.Tensor  # [V, T] int64: early-stopping windows from a slice of the calibration text
    tokens_available: int
    held_out_tokens_available: int
    stats_count: int = -1  # the pruner's statistics (masks, Hessians) come from the first stats_count windows
    parts: dict = field(default_factory=dict)  # {"real": n, "self_generated": n}
    held_out_generated: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    held_out_source: Optional[str] = None
    generation: Optional[dict] = None  # settings, seconds, redraws, cache hit/miss
    text: str = ""  # the real calibration text the windows were cut from (zero-shot tasks must avoid it)

    def __post_init__(self):
        if self.stats_count < 0:
            self.stats_count = len(self.windows)

    def summary(self, tokenizer=None) -> dict:
        out = {"num_samples": int(self.windows.shape[0]), "seq_len": int(self.windows.shape[1]),
               "held_out_samples": int(self.held_out.shape[0]), "val_samples": int(self.val.shape[0]),
               "parts": dict(self.parts), "stats_from_samples": self.stats_count,
               "held_out_source": self.held_out_source,
               "held_out_generated_samples": int(self.held_out_generated.shape[0]),
               "tokens_available": self.tokens_available,
               "held_out_tokens_available": self.held_out_tokens_available,
               "cache": (self.generation or {}).get("cache"), "generation": self.generation}
        if tokenizer is not None:
            start = 0
            out["token_stats"] = {}
            for name, n in self.parts.items():
                out["token_stats"][name] = token_statistics(self.windows[start : start + n], tokenizer)
                start += n
        return out


def token_statistics(windows: torch.Tensor, tokenizer) -> dict:
    """How varied a set of windows is: distinct tokens, and characters and words per window."""
    if not len(windows):
        return {"windows": 0}
    texts = tokenizer.batch_decode(windows)
    return {"windows": int(len(windows)), "tokens": int(windows.numel()),
            "distinct_tokens": int(torch.unique(windows).numel()),
            "distinct_fraction": float(torch.unique(windows).numel() / windows.numel()),
            "mean_chars": sum(len(t) for t in texts) / len(texts),
            "mean_words": sum(len(t.split()) for t in texts) / len(texts)}


def hub_root(cfg: DictConfig, name: str) -> str:
    return (cfg.get("datasets") or {}).get(name) or HUB_ROOTS[name]


def source_texts(cfg: DictConfig, source: str, cache_dir: Path) -> tuple[str, str]:
    """(calibration text, held-out text) of a real source; held-out "" for a single text file."""
    c = cfg.calibration
    sep = corpora.DOC_SEPARATOR
    if source == "embedded":
        docs = corpora.split_documents("embedded", corpora.embedded_news(cache_dir), c.held_out_fraction)
        return sep.join(docs.calibration), sep.join(docs.held_out)
    if source == "c4":
        root = hub_root(cfg, "c4")
        train = corpora.hub_documents("c4", "train", root, "datasets.c4", max_docs=C4_DOCS)
        val = corpora.hub_documents("c4", "validation", root, "datasets.c4", max_docs=C4_DOCS // 4)
        return sep.join(train), sep.join(val)
    if source == "wikitext2":
        root = hub_root(cfg, "wikitext2")
        train = corpora.hub_documents("wikitext2", "train", root, "datasets.wikitext2")
        val = corpora.hub_documents("wikitext2", "validation", root, "datasets.wikitext2")
        return corpora.wikitext_join(train), corpora.wikitext_join(val)
    if source == "redpajama":
        # the sample has no validation split: each subset holds out its last documents
        root, calib, held = hub_root(cfg, "redpajama"), [], []
        for subset in c.subsets:
            docs = corpora.hub_documents("redpajama", subset, root, "datasets.redpajama", max_docs=REDPAJAMA_DOCS)
            split = corpora.split_documents(f"redpajama/{subset}", docs, c.held_out_fraction)
            calib += split.calibration
            held += split.held_out
        return sep.join(calib), sep.join(held)
    if source == "jsonl_file":
        docs = corpora.read_jsonl_documents(c.path, c.field, "calibration.path", "calibration.field")
        split = corpora.split_documents(str(c.path), docs, c.held_out_fraction)
        return sep.join(split.calibration), sep.join(split.held_out)
    if source == "text_file":
        return corpora.read_text_file(c.path, "calibration.path"), ""
    raise ConfigError(f"calibration source {source!r} is unknown.")


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


def source_tokens(cfg: DictConfig, source: str, tokenizer, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(calibration tokens, held-out tokens, calibration text) of a real source."""
    calib_text, held_text = source_texts(cfg, source, cache_dir)
    tokens = tokenize(tokenizer, calib_text)
    if held_text:
        return tokens, tokenize(tokenizer, held_text), calib_text
    cut = len(tokens) - int(len(tokens) * cfg.calibration.held_out_fraction)  # a single text: its last tokens
    return tokens[:cut], tokens[cut:], calib_text


def build_calibration(cfg: DictConfig, tokenizer, cache_dir: Path, model=None, device: Optional[torch.device] = None,
                      model_fingerprint: str = "", offload_blocks=None, progress: bool = True) -> CalibrationSet:
    """Windows of the configured source: real, self-generated (needs the dense `model`), or mixed.

    Real windows depend only on the source and the seed, so the real part of a mixed set equals a
    real-only set of the same size; held-out windows depend only on the held-out source and the seed,
    so real, mixed and self-generated runs of a sweep are measured on one shared held-out set.
    """
    c = cfg.calibration
    seed = int(c.seed)
    real, held_name = real_source(c), c.held_out_source or real_source(c)
    tokens_of: dict[str, tuple[torch.Tensor, torch.Tensor, str]] = {}

    def tokens(name):
        if name not in tokens_of:
            tokens_of[name] = source_tokens(cfg, name, tokenizer, cache_dir)
        return tokens_of[name]

    empty = torch.zeros(0, c.seq_len, dtype=torch.long)
    parts: dict[str, int] = {}
    windows, val_windows, tokens_available = empty, empty, 0
    if real is not None:
        calib_tokens = tokens(real)[0]
        n_real = c.real.num_samples if c.source == "mixed" else c.num_samples
        val_tokens = torch.zeros(0, dtype=torch.long)
        if c.val_samples:  # the last tenth of the calibration text is kept for validation windows
            cut = len(calib_tokens) - max(len(calib_tokens) // 10, c.seq_len)
            calib_tokens, val_tokens = calib_tokens[:cut], calib_tokens[cut:]
        windows = random_windows(calib_tokens, n_real, c.seq_len, torch.Generator().manual_seed(seed),
                                 f"calibration source {real!r}", "calibration.num_samples x calibration.seq_len")
        val_windows = random_windows(val_tokens, c.val_samples, c.seq_len, torch.Generator().manual_seed(seed + 2),
                                     f"the validation slice of calibration source {real!r}",
                                     "calibration.val_samples x calibration.seq_len")
        tokens_available = len(calib_tokens)
        parts["real"] = n_real
    held_windows, held_available = empty, 0
    if held_name is not None and c.held_out_samples:
        held = tokens(held_name)[1]
        held_windows = random_windows(held, c.held_out_samples, c.seq_len, torch.Generator().manual_seed(seed + 1),
                                      f"the held-out part of source {held_name!r}",
                                      "calibration.held_out_samples x calibration.seq_len")
        held_available = len(held)

    generation, held_generated = None, empty
    n_gen = c.self_generated.num_samples if c.source in ("self_generated", "mixed") else 0
    n_val_gen = c.val_samples if real is None else 0  # self-generated only: validation windows are generated too
    if n_gen or c.held_out_generated:
        if model is None:
            raise ValueError("self-generated calibration data needs the dense model")
        calls = []

        def sample(g, count):
            out = cached_generate(model, tokenizer, g, count, c.seq_len, device, cache_dir, model_fingerprint,
                                  offload_blocks, progress)
            calls.append(out)
            return out.tokens

        if n_gen:
            gen = sample(c.self_generated, n_gen + n_val_gen)
            windows = torch.cat([windows, gen[:n_gen]])
            if n_val_gen:
                val_windows = gen[n_gen:]
            parts["self_generated"] = n_gen
        if c.held_out_generated:
            # a random stream of its own: every run of a sweep (real, mixed, self-generated) shares these samples,
            # and none of them can be a calibration sample
            g_held = OmegaConf.merge(c.self_generated, {"seed": int(c.self_generated.seed) + HELD_OUT_GENERATED_SEED})
            held_generated = sample(g_held, c.held_out_generated)
        generation = {"settings": settings(c.self_generated), "samples_generated": sum(len(o.tokens) for o in calls),
                      "seconds": sum(o.seconds for o in calls), "prefix_redraws": sum(o.redraws for o in calls),
                      "prefixes_unfiltered": sum(o.unfiltered for o in calls),
                      "cache": "hit" if all(o.cache == "hit" for o in calls) else "miss",
                      "cache_files": [o.path for o in calls]}
    stats_count = parts.get("real", 0) if c.source == "mixed" and c.stats_from == "real" else len(windows)
    log.info("Calibration: %s, %d windows of %d tokens; %d held-out windows from %s%s",
             " + ".join(f"{n} {name.replace('_', '-')}" for name, n in parts.items()), len(windows), c.seq_len,
             len(held_windows), held_name, f"; {len(held_generated)} held-out generated windows" if len(held_generated) else "")
    if stats_count < len(windows):
        log.info("Pruner statistics (masks, Hessians) from the %d real windows only; reconstruction uses all %d",
                 stats_count, len(windows))
    return CalibrationSet(c.source, windows, held_windows, val_windows, tokens_available, held_available, stats_count,
                          parts, held_generated, held_name, generation, tokens(real)[2] if real is not None else "")

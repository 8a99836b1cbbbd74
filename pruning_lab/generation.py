"""Self-generated calibration data: text sampled from the dense model itself, before pruning.

The scheme is the reference's (from LLM-QAT): the first token is drawn uniformly from the
vocabulary (special tokens excluded), the next `greedy_prefix` tokens are greedy, the rest is
sampled (temperature, top-k, top-p) up to `seq_len`. With `prefix_filter`, a greedy prefix that
does not look like natural language (`looks_like_prose`) is rejected and its first token redrawn.
Alternatives: the BOS token as the first token, or prompts from a text file.

Choices that matter downstream:
- special tokens (EOS, BOS, padding) are never sampled, so every sample is `seq_len` tokens of text,
  as a real calibration window is;
- every random draw uses a private `torch.Generator` on the CPU, so generation (or reading it from
  the cache) leaves the global random state alone: a cache hit gives results bit-identical to a miss;
- generation is batched with the model's KV cache; samples are cached on disk under
  `cache_dir/self_generated/<key>.pt`, keyed by the model's weights, the tokenizer's vocabulary and
  every generation setting, written atomically under a file lock and verified by checksum on read.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from .cache import atomic_save_torch, atomic_write_json, file_lock, fingerprint

log = logging.getLogger(__name__)

FORMAT = "self_generated-v1"  # bump when the sampling procedure changes: old cache entries are then ignored
PUNCTUATION = set(".,;:'\"!?-()")
MIN_WORDS = 2
MIN_PROSE_FRACTION = 0.9


def looks_like_prose(text: str) -> bool:
    """The prefix filter's rule (no network, no word list):
    1. at least two words of two or more Latin letters;
    2. at least 90% of the non-space characters are ASCII letters or ordinary punctuation
       (. , ; : ' " ! ? - ( )) — rejects code, markup, digits and non-Latin scripts;
    3. no character-level degeneration: the same word may not fill more than half of the words.
    """
    words = re.findall(r"[A-Za-z]{2,}", text)
    if len(words) < MIN_WORDS:
        return False
    chars = [ch for ch in text if not ch.isspace()]
    prose = sum(1 for ch in chars if (ch.isascii() and ch.isalpha()) or ch in PUNCTUATION)
    if prose < MIN_PROSE_FRACTION * len(chars):
        return False
    most = max(words.count(w) for w in set(words))
    return most * 2 <= len(words)


@dataclass
class Generated:
    tokens: torch.Tensor  # [N, T] int64
    seconds: float  # generation time (of the original run when read from the cache)
    redraws: int  # first tokens redrawn by the prefix filter
    unfiltered: int  # samples whose prefix still failed the filter after max_redraws
    cache: str  # "hit" | "miss"
    path: Optional[str]


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, sorted(tokenizer.all_special_ids)]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def banned_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    """Boolean [vocab_size]: special tokens, and logit rows beyond the tokenizer's vocabulary."""
    banned = torch.zeros(vocab_size, dtype=torch.bool)
    banned[min(len(tokenizer), vocab_size):] = True
    for i in tokenizer.all_special_ids:
        if 0 <= i < vocab_size:
            banned[i] = True
    return banned


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering, on float logits [B, V]."""
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
        drop = (probs.cumsum(-1) - probs) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@contextlib.contextmanager
def blocks_on_demand(blocks: nn.ModuleList, device: torch.device, enabled: bool) -> Iterator[None]:
    """For an offloaded model: each block visits the device only for its own forward."""
    if not enabled:
        yield
        return
    def arrive(module, args):
        module.to(device)

    def leave(module, args, output):
        module.to("cpu")

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(arrive), b.register_forward_hook(leave))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Sampler:
    """Batched generation with the KV cache; all draws from one private CPU generator."""

    def __init__(self, model: nn.Module, tokenizer, g: DictConfig, seq_len: int, device: torch.device):
        self.model, self.tokenizer, self.g, self.seq_len, self.device = model, tokenizer, g, seq_len, device
        vocab = model.get_output_embeddings().weight.shape[0]
        self.banned = banned_ids(tokenizer, vocab)
        self.allowed = torch.nonzero(~self.banned).flatten()
        self.gen = torch.Generator().manual_seed(int(g.seed))
        self.redraws = self.unfiltered = 0
        # transformers renamed `past_key_values` to `cache` during 5.x: use whichever this version takes
        self.cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _logits(self, out) -> torch.Tensor:
        return out.logits[:, -1].float().cpu().masked_fill(self.banned, float("-inf"))

    def _greedy(self, ids: torch.Tensor, steps: int) -> torch.Tensor:
        for _ in range(steps):  # a few tokens: recomputing without a cache is cheaper than managing one
            out = self.model(input_ids=ids.to(self.device), use_cache=False, logits_to_keep=1)
            ids = torch.cat([ids, self._logits(out).argmax(-1, keepdim=True)], dim=1)
        return ids

    def _first_tokens(self, n: int) -> torch.Tensor:
        pick = torch.randint(0, len(self.allowed), (n,), generator=self.gen)
        return self.allowed[pick].unsqueeze(1)

    def prefixes(self, n: int) -> torch.Tensor:
        """[n, 1 + greedy_prefix]: uniform first tokens, greedy continuation, filtered."""
        g = self.g
        ids = self._greedy(self._first_tokens(n), g.greedy_prefix)
        if not g.prefix_filter:
            return ids
        tries = torch.zeros(n, dtype=torch.long)
        while True:
            bad = [r for r in range(n) if not looks_like_prose(self.tokenizer.decode(ids[r]))]
            bad = [r for r in bad if tries[r] < g.max_redraws]
            if not bad:
                break
            rows = torch.tensor(bad)
            tries[rows] += 1
            self.redraws += len(bad)
            ids[rows] = self._greedy(self._first_tokens(len(bad)), g.greedy_prefix)
        self.unfiltered += sum(1 for r in range(n) if not looks_like_prose(self.tokenizer.decode(ids[r])))
        return ids

    @torch.no_grad()
    def complete(self, prefix: torch.Tensor, bar) -> torch.Tensor:
        """Sample from the end of `prefix` [B, P] to seq_len tokens, with the KV cache."""
        g = self.g
        out = self.model(input_ids=prefix.to(self.device), use_cache=True, logits_to_keep=1)
        ids = [prefix]
        for step in range(self.seq_len - prefix.shape[1]):
            logits = filter_logits(self._logits(out), g.temperature, g.top_k, g.top_p)
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen)
            ids.append(nxt)
            bar.update(len(nxt))
            if step < self.seq_len - prefix.shape[1] - 1:
                past = out.get(self.cache_kw)
                out = self.model(input_ids=nxt.to(self.device), use_cache=True, **{self.cache_kw: past})
        return torch.cat(ids, dim=1)


def _prompt_ids(tokenizer, g: DictConfig, seq_len: int) -> list[list[int]]:
    lines = [x.strip() for x in Path(g.prompts_path).expanduser().read_text(encoding="utf-8").splitlines() if x.strip()]
    room = seq_len - g.greedy_prefix - 1  # leave room for the greedy prefix and one sampled token
    return [tokenizer(x, add_special_tokens=False)["input_ids"][:room] or [tokenizer.bos_token_id] for x in lines]


@torch.no_grad()
def generate(model: nn.Module, tokenizer, g: DictConfig, count: int, seq_len: int, device: torch.device,
             offload_blocks: Optional[nn.ModuleList] = None, progress: bool = True) -> Generated:
    """`count` samples of `seq_len` tokens from the dense model (no cache involved)."""
    t0 = time.perf_counter()
    sampler = Sampler(model, tokenizer, g, seq_len, device)
    samples: list[Optional[torch.Tensor]] = [None] * count
    if g.first_token == "prompts":
        prompts = _prompt_ids(tokenizer, g, seq_len)
        starts = [prompts[i % len(prompts)] for i in range(count)]  # prompts are used in order, cycling
    elif g.first_token == "bos":
        if tokenizer.bos_token_id is None:
            from .errors import ConfigError

            raise ConfigError("calibration.self_generated.first_token=bos: this tokenizer has no BOS token; use uniform or prompts.")
        starts = [[tokenizer.bos_token_id]] * count
    else:
        starts = None
    # batches of equal start length (all of them for uniform and bos), in sample order
    order = list(range(count)) if starts is None else sorted(range(count), key=lambda i: (len(starts[i]), i))
    batches = [order[i : i + g.batch_size] for i in range(0, count, g.batch_size)]
    if starts is not None:  # split batches where the prompt length changes
        batches = [[i for i in b if len(starts[i]) == n] for b in batches for n in sorted({len(starts[i]) for i in b})]
    was_training = model.training
    model.eval()
    with blocks_on_demand(offload_blocks, device, offload_blocks is not None), \
            tqdm(total=count * seq_len, desc="generating calibration samples", unit="tok", disable=not progress) as bar:
        for batch in batches:
            if starts is None:
                prefix = sampler.prefixes(len(batch))
            else:
                prefix = sampler._greedy(torch.tensor([starts[i] for i in batch]), g.greedy_prefix)
            bar.update(prefix.numel())
            for i, row in zip(batch, sampler.complete(prefix, bar)):
                samples[i] = row
    model.train(was_training)
    seconds = time.perf_counter() - t0
    if sampler.unfiltered:
        log.warning("%d of %d generated prefixes still failed the prefix filter after %d redraws; kept as they are",
                    sampler.unfiltered, count, g.max_redraws)
    return Generated(torch.stack(samples), seconds, sampler.redraws, sampler.unfiltered, "miss", None)


def settings(g: DictConfig) -> dict:
    """Every generation setting except the count (part of the key on its own)."""
    out = OmegaConf.to_container(g, resolve=True)
    out.pop("num_samples", None)
    return out


def cache_key(g: DictConfig, count: int, seq_len: int, model_fingerprint: str, tokenizer, dtype: torch.dtype,
              device: torch.device) -> str:
    prompts = None
    if g.first_token == "prompts":
        prompts = hashlib.sha256(Path(g.prompts_path).expanduser().read_bytes()).hexdigest()[:16]
    # dtype and device type change the logits, hence the samples
    return fingerprint(FORMAT, model_fingerprint, tokenizer_fingerprint(tokenizer), settings(g), count, seq_len,
                       str(dtype), device.type, prompts)


def _checksum(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.contiguous().numpy().tobytes()).hexdigest()


def _read(path: Path, count: int, seq_len: int) -> Optional[dict]:
    """The cached item, or None when absent; a corrupt or partial item is reported and deleted."""
    if not path.is_file():
        return None
    try:
        item = torch.load(path, map_location="cpu", weights_only=True)
        tokens = item["tokens"]
        ok = (isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long and tuple(tokens.shape) == (count, seq_len)
              and item["sha256"] == _checksum(tokens))
    except Exception as exc:  # unreadable pickle, truncated zip, missing keys
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    else:
        reason = "shape or checksum mismatch"
    if ok:
        return item
    log.warning("Cached generated samples %s are corrupt (%s): regenerating them", path, reason)
    path.unlink(missing_ok=True)
    return None


def cached_generate(model: nn.Module, tokenizer, g: DictConfig, count: int, seq_len: int, device: torch.device,
                    cache_dir: Path, model_fingerprint: str, offload_blocks: Optional[nn.ModuleList] = None,
                    progress: bool = True) -> Generated:
    dtype = next(model.parameters()).dtype
    key = cache_key(g, count, seq_len, model_fingerprint, tokenizer, dtype, device)
    path = cache_dir / "self_generated" / f"{key}.pt"

    def hit(item: dict) -> Generated:
        m = item["meta"]
        log.info("Generated calibration samples read from the cache (%s; generated in %.1f s)", path, m["seconds"])
        return Generated(item["tokens"], m["seconds"], m["redraws"], m["unfiltered"], "hit", str(path))

    item = _read(path, count, seq_len)
    if item is not None:
        return hit(item)
    with file_lock(path.with_suffix(".lock")):  # parallel sweep jobs: one generates, the others wait and read
        item = _read(path, count, seq_len)
        if item is not None:
            return hit(item)
        log.info("Generating %d calibration samples of %d tokens from the dense model (%s first token, %d greedy, "
                 "temperature %g, top-k %d, top-p %g)", count, seq_len, g.first_token, g.greedy_prefix, g.temperature,
                 g.top_k, g.top_p)
        out = generate(model, tokenizer, g, count, seq_len, device, offload_blocks, progress)
        meta = {"seconds": out.seconds, "redraws": out.redraws, "unfiltered": out.unfiltered, "count": count,
                "seq_len": seq_len, "settings": settings(g), "model": model_fingerprint, "dtype": str(dtype)}
        atomic_save_torch({"tokens": out.tokens, "sha256": _checksum(out.tokens), "meta": meta}, path)
        atomic_write_json(path.with_suffix(".json"), {"kind": "self_generated samples", **meta})
        log.info("Generated %d samples in %.1f s (%d prefixes redrawn); cached in %s", count, out.seconds, out.redraws, path)
        out.path = str(path)
        return out

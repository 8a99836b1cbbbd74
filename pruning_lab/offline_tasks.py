"""Zero-shot tasks built from local text, registered as ordinary lm-eval tasks (JSONL + YAML).

Two kinds, from documents that calibration never sees (the embedded Wikipedia articles by default):

- `pl_next_sentence` (HellaSwag-like, multiple choice): a context of consecutive sentences, then the
  true next sentence among `choices - 1` distractors. Distractors are sentences from OTHER documents
  that start with the same word as the true sentence (case-insensitive), drawn at random among those
  whose word count is within 20% (at least 2 words) of it; when fewer such sentences exist, the
  closest in word count are taken. A true sentence whose first word starts too few sentences
  elsewhere is not used. So neither the first word nor the length gives the answer away; what is
  left is whether the sentence continues the context. The order of the choices is shuffled.
- `pl_last_word` (LAMBADA-like, loglikelihood): a passage whose last word must be predicted; the
  word (alphabetic, 3+ letters) also occurs earlier in the passage, so context helps. Accuracy is
  lm-eval's `is_greedy`: the word is the model's greedy continuation. (No perplexity metric: its
  stderr would be a bootstrap in a forked process pool, which can deadlock a threaded process.)

Items are deterministic given the seed; at most `items` per task; contexts at most
`max_context_tokens` tokens. An item whose context or answer sentence appears verbatim in the
calibration text is dropped, so no calibration document leaks into a task.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .cache import atomic_directory, file_lock, fingerprint

BUILDER_VERSION = 2
NEXT_SENTENCE = "pl_next_sentence"
LAST_WORD = "pl_last_word"
OFFLINE_TASKS = (NEXT_SENTENCE, LAST_WORD)
MIN_WORDS, MAX_WORDS = 6, 40  # answer sentences of ordinary length
LENGTH_TOLERANCE = 0.2

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sentences(document: str) -> list[str]:
    """Sentences of a document: split after . ! ? followed by a capital; lines are paragraphs."""
    out = []
    for paragraph in document.split("\n"):
        paragraph = paragraph.strip()
        if paragraph and not paragraph.startswith("="):  # skip `= Title =` headers
            out += [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]
    return out


def _first_word(s: str) -> str:
    return s.split()[0].lower() if s.split() else ""


@dataclass
class TaskSet:
    folder: Path
    names: tuple[str, ...]
    identity: str  # changes whenever any item changes: keys the dense zero-shot cache
    counts: dict[str, int]


def _leaks(texts: list[str], exclude: str) -> bool:
    return bool(exclude) and any(t in exclude for t in texts)


def next_sentence_items(docs: list[list[str]], tokenizer, items: int, max_context_tokens: int, choices: int,
                        rng: random.Random, exclude: str) -> list[dict]:
    pool = [(d, s) for d, sents in enumerate(docs) for s in sents if MIN_WORDS <= len(s.split()) <= MAX_WORDS]
    by_first: dict[str, list[tuple[int, str]]] = {}
    for d, s in pool:
        by_first.setdefault(_first_word(s), []).append((d, s))
    candidates = []  # (doc, position of the true sentence)
    for d, sents in enumerate(docs):
        for i in range(2, len(sents)):
            if MIN_WORDS <= len(sents[i].split()) <= MAX_WORDS:
                candidates.append((d, i))
    rng.shuffle(candidates)
    out, used_docs = [], {}
    for d, i in candidates:
        if len(out) >= items:
            break
        if used_docs.get(d, 0) >= max(1, items // max(len(docs), 1) + 1):  # spread items over documents
            continue
        sents, target = docs[d], docs[d][i]
        context = None
        for k in (4, 3, 2):  # the longest context of up to 4 sentences that fits the token budget
            if i - k >= 0:
                text = " ".join(sents[i - k : i])
                if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_context_tokens:
                    context = text
                    break
        if context is None or _leaks(sents[max(0, i - 4) : i + 1], exclude):
            continue
        n = len(target.split())
        same_first = [s for dd, s in by_first.get(_first_word(target), []) if dd != d and s != target]
        if len(set(same_first)) < choices - 1:
            continue  # a rare first word would single the answer out: take another item
        same_first = sorted(set(same_first))
        near = [s for s in same_first if abs(len(s.split()) - n) <= max(2, LENGTH_TOLERANCE * n)]
        if len(near) >= choices - 1:
            distractors = rng.sample(near, choices - 1)
        else:  # the closest in length among the sentences with the same first word
            distractors = sorted(same_first, key=lambda s: (abs(len(s.split()) - n), s))[: choices - 1]
        options = [target] + distractors
        rng.shuffle(options)
        out.append({"context": context, "choices": options, "gold": options.index(target), "doc": d})
        used_docs[d] = used_docs.get(d, 0) + 1
    return out


_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})([.!?\"')]*)$", re.S)


def last_word_items(docs: list[list[str]], tokenizer, items: int, max_context_tokens: int, rng: random.Random,
                    exclude: str) -> list[dict]:
    candidates = [(d, i) for d, sents in enumerate(docs) for i in range(1, len(sents))]
    rng.shuffle(candidates)
    out, used_docs = [], {}
    for d, i in candidates:
        if len(out) >= items:
            break
        if used_docs.get(d, 0) >= max(1, items // max(len(docs), 1) + 1):
            continue
        sents = docs[d]
        for k in (4, 3, 2, 1):  # the longest passage of up to 5 sentences that fits
            if i - k < 0:
                continue
            passage = " ".join(sents[i - k : i + 1])
            m = _WORD.match(passage)
            if m is None:
                break
            context, word = m.group(1), m.group(2)
            if re.search(rf"\b{word}\b", context) is None:
                break  # the word must be predictable from the passage
            if len(tokenizer(context, add_special_tokens=False)["input_ids"]) <= max_context_tokens:
                if not _leaks(sents[i - k : i + 1], exclude):
                    out.append({"context": context, "target": " " + word, "doc": d})
                    used_docs[d] = used_docs.get(d, 0) + 1
                break
    return out


def _yaml(name: str, data_file: Path, kind: str) -> str:
    common = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
              "test_split: test\ndoc_to_text: context\n")
    if kind == "multiple_choice":
        return common + ("output_type: multiple_choice\ndoc_to_target: gold\ndoc_to_choice: choices\n"
                         "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                         "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
                         f"metadata:\n  version: {BUILDER_VERSION}\n")
    # acc only: lm-eval's stderr for a perplexity metric is a bootstrap in a forked process pool,
    # which can deadlock in a process that already runs threads (seen under submitit)
    return common + ("output_type: loglikelihood\ndoc_to_target: target\ntarget_delimiter: \"\"\n"
                     "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                     f"metadata:\n  version: {BUILDER_VERSION}\n")


def build_tasks(documents: list[str], tokenizer, cache_dir: Path, source_id: str, items: int, max_context_tokens: int,
                choices: int, seed: int, exclude: str = "", names: Optional[tuple[str, ...]] = None) -> TaskSet:
    """Write the offline tasks under cache_dir/zeroshot_tasks/<key>/ (once per setting) and return them."""
    names = tuple(n for n in (names or OFFLINE_TASKS) if n in OFFLINE_TASKS)
    settings = {"items": items, "max_context_tokens": max_context_tokens, "choices": choices, "seed": seed,
                "names": names, "vocab": len(tokenizer)}
    key = fingerprint("offline_tasks", BUILDER_VERSION, source_id, settings, fingerprint(exclude))
    folder = cache_dir / "zeroshot_tasks" / key
    manifest = folder / "manifest.json"
    with file_lock(folder.with_suffix(".lock")):
        if not manifest.is_file():
            _build(documents, tokenizer, folder, names, settings, source_id, key, items, max_context_tokens, choices,
                   seed, exclude)
    info = json.loads(manifest.read_text())
    return TaskSet(folder, names, content_identity(folder, names), info["counts"])


def content_identity(folder: Path, names: tuple[str, ...]) -> str:
    """A hash of the items themselves (and the builder version that sets the metrics), not of the
    build settings: two builds whose leak check removed nothing different (a self-generated and a
    real calibration text, say) hold the same items and share one cached dense score."""
    digests = [(n, hashlib.sha256((folder / f"{n}.jsonl").read_bytes()).hexdigest()) for n in names]
    return fingerprint("offline_task_items", BUILDER_VERSION, digests)


def _build(documents, tokenizer, folder, names, settings, source_id, key, items, max_context_tokens, choices, seed,
           exclude) -> None:
    docs = [sentences(d) for d in documents]
    built = {}
    if NEXT_SENTENCE in names:
        built[NEXT_SENTENCE] = next_sentence_items(docs, tokenizer, items, max_context_tokens, choices,
                                                   random.Random(seed), exclude)
    if LAST_WORD in names:
        built[LAST_WORD] = last_word_items(docs, tokenizer, items, max_context_tokens, random.Random(seed + 1), exclude)
    with atomic_directory(folder) as tmp:
        for name, rows in built.items():
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            kind = "multiple_choice" if name == NEXT_SENTENCE else "loglikelihood"
            (tmp / f"{name}.yaml").write_text(_yaml(name, folder / f"{name}.jsonl", kind))
        (tmp / "manifest.json").write_text(json.dumps({"settings": settings, "source": source_id, "key": key,
                                                       "counts": {n: len(r) for n, r in built.items()}}))

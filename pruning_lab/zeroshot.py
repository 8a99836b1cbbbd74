"""Zero-shot accuracy through lm-evaluation-harness, on the model object already in memory.

The pruned model is wrapped as `HFLM(pretrained=model, tokenizer=...)`, never saved and reloaded.
Standard tasks run by their lm-eval names (their datasets come from the hub); the offline tasks of
offline_tasks.py are registered through `TaskManager(include_path=...)` and run the same way.
Task names are checked before any model is loaded (typos get close matches; a task that needs the
hub while it is unreachable is refused with what to do). lm-eval seeds the global random
generators; the states are saved and restored around it, so evaluating never changes what a run
computes afterwards.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from . import corpora
from .cache import cached_value, fingerprint
from .errors import ConfigError
from .generation import blocks_on_demand
from .offline_tasks import OFFLINE_TASKS, TaskSet, build_tasks

log = logging.getLogger(__name__)

# acc and acc_norm always (acc_norm is None for loglikelihood tasks); perplexity where a task reports it
SCORE_KEYS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "perplexity")
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _registry():
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _dataset_path(entry) -> Optional[str]:
    """The hub dataset a registered task reads (following `include:` of its YAML)."""
    path = getattr(entry, "yaml_path", None)
    seen = 0
    while path is not None and seen < 5:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^dataset_path:\s*(\S+)", text, re.M)
        if m:
            return m.group(1).strip("'\"")
        inc = re.search(r"^include:\s*(\S+)", text, re.M)
        path = Path(path).parent / inc.group(1).strip("'\"") if inc else None
        seen += 1
    return None


def _in_local_datasets_cache(dataset: str) -> bool:
    root = Path(os.environ.get("HF_DATASETS_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "datasets")
    root = root.expanduser()
    stem = dataset.replace("/", "___")
    return root.is_dir() and any(p.name.startswith(stem) for p in root.iterdir())


def check_tasks(z: DictConfig) -> None:
    """Before anything loads: every task name exists, and hub tasks can reach their data."""
    hub_tasks = [t for t in z.tasks if t not in OFFLINE_TASKS]
    if not hub_tasks:
        return
    registry = _registry()
    known = set(registry.all_tasks)
    for i, name in enumerate(z.tasks):
        if name in OFFLINE_TASKS or name in known:
            continue
        close = difflib.get_close_matches(name, list(known) + list(OFFLINE_TASKS), n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else " `lm-eval ls tasks` lists them."
        raise ConfigError(f"eval.zeroshot.tasks[{i}]={name!r} is not an lm-eval task nor an offline task "
                          f"({', '.join(OFFLINE_TASKS)}).{hint}")
    ok, reason = corpora.hub_reachable()
    if ok:
        return
    for name in hub_tasks:
        dataset = _dataset_path(registry.task_index.get(name)) if hasattr(registry, "task_index") else None
        if dataset is None or _in_local_datasets_cache(dataset):
            continue
        raise ConfigError(
            f"eval.zeroshot.tasks: {name!r} reads the hub dataset {dataset!r}, but {reason} and it is not in the local "
            f"datasets cache. Run once where the hub is reachable (the datasets cache then serves later offline runs), "
            f"or use the offline tasks: eval.zeroshot.tasks='[{','.join(OFFLINE_TASKS)}]'.")


def offline_documents(z: DictConfig, cache_dir: Path) -> tuple[list[str], str]:
    """(documents, identity) of the text the offline tasks are built from."""
    src = z.offline.source
    if src == "embedded_wiki":
        docs = corpora.embedded_wiki_text(cache_dir).split(corpora.DOC_SEPARATOR)
        return docs, "embedded_wiki-v2"
    text = corpora.read_text_file(src, "eval.zeroshot.offline.source")
    docs = [d for d in re.split(r"\n\s*\n", text) if d.strip()]
    return docs, f"file:{fingerprint(text)}"


def prepare_offline(z: DictConfig, tokenizer, cache_dir: Path, exclude: str) -> Optional[TaskSet]:
    names = tuple(t for t in z.tasks if t in OFFLINE_TASKS)
    if not names:
        return None
    docs, source_id = offline_documents(z, cache_dir)
    o = z.offline
    tasks = build_tasks(docs, tokenizer, cache_dir, source_id, o.max_items, o.max_context_tokens, o.choices, o.seed,
                        exclude=exclude, names=names)
    for name, n in tasks.counts.items():
        if n < o.max_items:
            log.warning("Offline task %s has %d items (asked for %d): the source text is too short", name, n, o.max_items)
    return tasks


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def _metric(values: dict, name: str) -> Optional[float]:
    v = values.get(f"{name},none")
    return None if v is None or v == "N/A" else float(v)


def evaluate(model, tokenizer, z: DictConfig, offline: Optional[TaskSet], device: torch.device,
             offload_blocks=None) -> dict[str, dict[str, Any]]:
    """Per task: acc, acc_norm (None where the task has none), their stderr, and the item count."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    only_offline = all(t in OFFLINE_TASKS for t in z.tasks)
    manager = TaskManager(include_path=str(offline.folder) if offline else None, include_defaults=not only_offline)
    was_training = model.training
    model.eval()
    with preserved_random_state(), blocks_on_demand(offload_blocks, device, offload_blocks is not None):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=z.batch_size, device=str(device))
        out = lm_eval.simple_evaluate(model=lm, tasks=list(z.tasks), num_fewshot=z.num_fewshot, limit=z.limit,
                                      bootstrap_iters=z.bootstrap_iters, task_manager=manager, log_samples=False)
    model.train(was_training)
    scores = {}
    for name in z.tasks:
        values = out["results"].get(name, {})
        n = out.get("n-samples", {}).get(name, {})
        scores[name] = {k: _metric(values, k) for k in SCORE_KEYS}
        scores[name]["n"] = int(n.get("effective", n.get("original", 0)) or 0)
    return scores


def dense_cached(cache_dir: Path, key_parts: tuple, compute) -> tuple[dict, bool]:
    """Dense zero-shot scores, computed once per (model, tasks, settings) like dense perplexity."""
    return cached_value(cache_dir / "dense_zeroshot" / f"{fingerprint(*key_parts)}.json", "scores", key_parts, compute)


def headline(score: dict, metric: str) -> Optional[float]:
    """The number the mean averages: `metric`, or acc for a task without acc_norm (last-word tasks)."""
    v = score.get(metric)
    return score.get("acc") if v is None else v


def summarise(sparse: dict, dense: Optional[dict], metric: str) -> dict:
    tasks = {}
    for name, s in sparse.items():
        d = (dense or {}).get(name)
        tasks[name] = {"sparse": {k: s.get(k) for k in SCORE_KEYS}, "dense": {k: d.get(k) for k in SCORE_KEYS} if d else None,
                       "n": s["n"]}

    def mean(side: dict) -> Optional[float]:
        vals = [headline(v, metric) for v in side.values()]
        return sum(vals) / len(vals) if vals and None not in vals else None

    return {"tasks": tasks, "metric": metric, "mean": {"sparse": mean(sparse), "dense": mean(dense) if dense else None}}

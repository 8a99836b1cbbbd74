"""Text corpora: the embedded offline texts, plain text files and the hub datasets by name.

A corpus is a list of documents. Calibration sources split documents into a part pruning may see and a
held-out part it never sees; evaluation texts are joined into one string and tokenized once.
Hub datasets are read with `datasets` from a root that is the hub (`hf://datasets/...`) by default
or a local folder with the same layout (a mirror, or the test fixtures).
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .cache import atomic_write_text, file_lock
from .config import REDPAJAMA_SUBSETS
from .errors import ConfigError

log = logging.getLogger(__name__)

GENSIM_DATA = "test/test_data"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
MIN_LINE_WORDS = 8  # Wikipedia lines shorter than this are headings, captions or list debris
QUOTE = "'"  # wiki bold is three of these, italics two

# Today's hub layouts (file names inside the dataset repositories).
HUB_FILES = {
    "c4": {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"},
    "wikitext2": {
        "train": "wikitext-2-raw-v1/train-00000-of-00001.parquet",
        "validation": "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
        "test": "wikitext-2-raw-v1/test-00000-of-00001.parquet",
    },
    # togethercomputer/RedPajama-Data-1T-Sample: one JSON-lines file per subset at the root
    "redpajama": {subset: f"{subset}_sample.jsonl" for subset in REDPAJAMA_SUBSETS},
}


@dataclass
class Documents:
    """Documents of one source, already split so that held-out documents never reach pruning."""

    name: str
    calibration: list[str]
    held_out: list[str]


def _gensim_file(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ConfigError("the embedded texts ship inside the `gensim` wheel: run `pip install gensim`.")
    path = Path(spec.origin).parent / GENSIM_DATA / name
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed gensim; reinstall it with `pip install --force-reinstall gensim`.")
    return path


def _cached_text(cache_dir: Path, name: str, build) -> str:
    """Extract once per cache folder; the key covers the extraction rule's version."""
    path = cache_dir / "corpora" / f"{name}.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return path.read_text(encoding="utf-8")
        text = build()
        atomic_write_text(path, text)
        return text


def wikipedia_articles() -> list[str]:
    """The 106 non-redirect articles of the gensim sample dump as `= Title =` headed plain text.

    Wiki markup is stripped with gensim's `filter_wiki`, plus the bold/italic quote runs it leaves;
    lines under 8 words are dropped (headings, captions, list debris). Articles are ordered longest
    first (by extracted text), so the first windows always come from the same long articles.
    """
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.BZ2File(_gensim_file(WIKI_FILE)) as handle:
        for title, raw, _ in extract_pages(handle):
            if raw.lstrip().lower().startswith("#redirect"):
                continue
            text = filter_wiki(raw).replace(3 * QUOTE, "").replace(2 * QUOTE, "")
            lines = [line.strip() for line in text.splitlines()]
            body = "\n".join(line for line in lines if len(line.split()) >= MIN_LINE_WORDS)
            if body:
                articles.append(f"= {title} =\n{body}")
    articles.sort(key=len, reverse=True)
    return articles


def news_stories() -> list[str]:
    """The 300 news stories of gensim's Lee corpus, one per line: web-like prose (a C4 stand-in)."""
    text = _gensim_file(NEWS_FILE).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


DOC_SEPARATOR = "\n\n"


def embedded_wiki_text(cache_dir: Path) -> str:
    return _cached_text(cache_dir, "embedded_wiki-v2", lambda: DOC_SEPARATOR.join(wikipedia_articles()))


def embedded_news(cache_dir: Path) -> list[str]:
    text = _cached_text(cache_dir, "embedded_news-v1", lambda: DOC_SEPARATOR.join(news_stories()))
    return text.split(DOC_SEPARATOR)


def split_documents(name: str, docs: list[str], held_out_fraction: float) -> Documents:
    """The last `held_out_fraction` of the documents (in source order) are held out: a split by
    document, fixed across seeds, so every run of a sweep is measured on the same held-out text."""
    n_held = max(1, round(len(docs) * held_out_fraction)) if held_out_fraction > 0 else 0
    if n_held >= len(docs):
        raise ConfigError(f"calibration source {name!r} has only {len(docs)} documents: too few to hold any out.")
    return Documents(name, docs[: len(docs) - n_held], docs[len(docs) - n_held :])


def read_text_file(path: str | os.PathLike, key: str) -> str:
    """A UTF-8 text file, with a message naming the config key when it is missing or empty."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise ConfigError(f"{key}={path}: no such file. Give the path of a UTF-8 text file.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}={path}: not UTF-8 text ({exc}).") from exc
    if not text.strip():
        raise ConfigError(f"{key}={path}: the file is empty.")
    return text


def _field(record, field: str):
    """`field` may be dotted (`meta.text`) to reach into nested objects."""
    value = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _jsonl_records(path: Path, key: str):
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}={path}: line {number} is not JSON ({exc.msg}); expected one JSON object per line.") from exc


def check_jsonl_field(path: str, field: str, path_key: str, field_key: str) -> None:
    """The first record must hold `field` as text: a typo fails before any model is loaded."""
    p = Path(os.path.expanduser(str(path)))
    for _, record in _jsonl_records(p, path_key):
        value = _field(record, field)
        if not isinstance(value, str):
            keys = sorted(record) if isinstance(record, dict) else []
            what = "is missing" if value is None else f"is a {type(value).__name__}, not text"
            raise ConfigError(f"{field_key}={field!r} {what} in the first record of {path}; its fields: "
                              f"{', '.join(keys) or '(not an object)'}. Set {field_key}=<the text field>.")
        return
    raise ConfigError(f"{path_key}={path}: no JSON record in the file.")


def read_jsonl_documents(path: str, field: str, path_key: str, field_key: str) -> list[str]:
    """Documents of a JSON-lines file: the text `field` of every record (empty texts skipped)."""
    p = Path(os.path.expanduser(str(path)))
    docs = []
    for number, record in _jsonl_records(p, path_key):
        value = _field(record, field)
        if not isinstance(value, str):
            raise ConfigError(f"{path}: line {number} has no text field {field!r} ({field_key}).")
        if value.strip():
            docs.append(value.strip())
    if not docs:
        raise ConfigError(f"{path_key}={path}: every {field!r} field is empty.")
    return docs


# ---------------------------------------------------------------- hub datasets


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the model hub answers; honours HF_HUB_OFFLINE. Returns (ok, reason)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True, ""
    except OSError as exc:
        return False, f"{host} is unreachable ({exc})"


def check_hub_root(root: str, key: str) -> None:
    """Fail fast, before any heavy work, when a dataset root on the hub cannot be reached."""
    if root.startswith("hf://"):
        ok, reason = hub_reachable()
        if not ok:
            raise ConfigError(
                f"{key}={root} needs the Hugging Face hub, but {reason}. Download the dataset files "
                f"into a folder with the same layout and set {key}=<that folder>, or use the embedded "
                "offline data (calibration=embedded, eval.perplexity.datasets=[embedded_wiki])."
            )
    elif not Path(root).is_dir():
        raise ConfigError(f"{key}={root}: no such folder (expected the hub layout, e.g. {next(iter(HUB_FILES['c4'].values()))}).")


def _hub_file(root: str, dataset: str, split: str, key: str) -> str:
    rel = HUB_FILES[dataset][split]
    if root.startswith("hf://"):
        return f"{root.rstrip('/')}/{rel}"
    path = Path(root) / rel
    if not path.is_file():
        raise ConfigError(f"{key}={root}: missing {rel} (the hub layout of {dataset}).")
    return str(path)


def hub_documents(dataset: str, split: str, root: str, key: str, max_docs: int | None = None) -> list[str]:
    """Documents of one split of a hub dataset (its `text` column), read with `datasets`."""
    import datasets

    check_hub_root(root, key)
    path = _hub_file(root, dataset, split, key)
    builder = "json" if path.endswith((".json", ".json.gz", ".jsonl")) else "parquet"
    split_arg = "train" if max_docs is None else f"train[:{max_docs}]"
    ds = datasets.load_dataset(builder, data_files={"train": path}, split=split_arg)
    if "text" not in ds.column_names:
        raise ConfigError(f"{path}: no `text` column (columns: {ds.column_names}).")
    return list(ds["text"])


def wikitext_join(lines: list[str]) -> str:
    """WikiText-2 rows are lines of one long text: joined as in the standard perplexity protocol."""
    return "\n\n".join(lines)



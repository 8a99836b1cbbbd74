"""Calibration windows, held-out splits, evaluation texts and the hub loaders (on local fixtures)."""

import gzip
import json

import pytest
import torch

from pruning_lab import corpora
from pruning_lab.calibration import build_calibration, source_texts
from pruning_lab.errors import ConfigError
from pruning_lab.perplexity import eval_windows

from .conftest import compose_config


def test_embedded_texts_are_real_and_split_by_document(shared_cache):
    stories = corpora.news_stories()
    assert len(stories) == 300 and all(len(s.split()) > 20 for s in stories)
    docs = corpora.split_documents("embedded", stories, 0.15)
    assert len(docs.held_out) == 45 and not set(docs.held_out) & set(docs.calibration)
    articles = corpora.wikipedia_articles()
    assert len(articles) == 106 and articles[0].startswith("= ") and len(articles[0]) >= len(articles[-1])
    assert not any("#REDIRECT" in a[:50] for a in articles)


def test_windows_deterministic_per_seed(embedded_tokenizer, shared_cache):
    small = ["calibration.num_samples=4", "calibration.seq_len=64", "calibration.held_out_samples=2"]
    a = build_calibration(compose_config(*small, "seed=1"), embedded_tokenizer, shared_cache)
    b = build_calibration(compose_config(*small, "seed=1"), embedded_tokenizer, shared_cache)
    c = build_calibration(compose_config(*small, "seed=2"), embedded_tokenizer, shared_cache)
    assert a.windows.shape == (4, 64) and a.held_out.shape == (2, 64)
    assert torch.equal(a.windows, b.windows) and torch.equal(a.held_out, b.held_out)
    assert not torch.equal(a.windows, c.windows)


def test_held_out_windows_never_come_from_calibration_documents(embedded_tokenizer, shared_cache):
    cfg = compose_config("calibration.num_samples=16", "calibration.seq_len=32", "calibration.held_out_samples=16")
    calib = build_calibration(cfg, embedded_tokenizer, shared_cache)
    docs = corpora.split_documents("embedded", corpora.embedded_news(shared_cache), 0.15)
    held_text = corpora.DOC_SEPARATOR.join(docs.held_out)
    calib_text = corpora.DOC_SEPARATOR.join(docs.calibration)
    for w in calib.held_out:
        piece = embedded_tokenizer.decode(w[2:-2])  # inner tokens decode to a substring
        assert piece in held_text and piece not in calib_text
    for w in calib.windows[:4]:
        assert embedded_tokenizer.decode(w[2:-2]) in calib_text


def test_text_file_holds_out_its_last_tokens(tmp_path, embedded_tokenizer, shared_cache):
    words = [f"w{i}" for i in range(3000)]
    f = tmp_path / "corpus.txt"
    f.write_text(" ".join(words))
    cfg = compose_config("calibration=text_file", f"calibration.path={f}", "calibration.num_samples=8",
                         "calibration.seq_len=32", "calibration.held_out_samples=2")
    calib = build_calibration(cfg, embedded_tokenizer, shared_cache)
    all_tokens = embedded_tokenizer(f.read_text(), add_special_tokens=False)["input_ids"]
    cut = len(all_tokens) - int(len(all_tokens) * 0.1)
    assert calib.tokens_available == cut and calib.held_out_tokens_available == len(all_tokens) - cut
    tail = all_tokens[cut:]
    for w in calib.held_out.tolist():
        assert any(tail[s : s + 32] == w for s in range(len(tail) - 31))


def test_too_few_tokens_is_a_clear_error(tmp_path, embedded_tokenizer, shared_cache):
    f = tmp_path / "short.txt"
    f.write_text("a short text of a few words " * 20)
    cfg = compose_config("calibration=text_file", f"calibration.path={f}")
    with pytest.raises(ConfigError, match=r"fewer than the 64 x 512 = 32768 asked for \(calibration.num_samples x calibration.seq_len\)"):
        build_calibration(cfg, embedded_tokenizer, shared_cache)


def test_eval_windows_from_the_start_and_non_overlapping(tmp_path, embedded_tokenizer, shared_cache):
    f = tmp_path / "eval.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    cfg = compose_config(f"eval.perplexity.datasets=[{f}]", "eval.perplexity.seq_len=50", "eval.perplexity.max_windows=3")
    ev = eval_windows(str(f), cfg, embedded_tokenizer, shared_cache)
    tokens = embedded_tokenizer(f.read_text(), add_special_tokens=False)["input_ids"]
    assert ev.windows.tolist() == [tokens[0:50], tokens[50:100], tokens[100:150]]


# ------------------------------------------------------------------ hub layouts on local fixtures


@pytest.fixture
def hub_fixtures(tmp_path, shared_cache):
    import datasets

    news = corpora.news_stories()
    c4 = tmp_path / "c4"
    (c4 / "en").mkdir(parents=True)
    for name, docs in (("c4-train.00000-of-01024.json.gz", news[:250]), ("c4-validation.00000-of-00008.json.gz", news[250:])):
        with gzip.open(c4 / "en" / name, "wt") as fh:
            for d in docs:
                fh.write(json.dumps({"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.org"}) + "\n")
    wt = tmp_path / "wikitext" / "wikitext-2-raw-v1"
    wt.mkdir(parents=True)
    articles = corpora.wikipedia_articles()
    for split, arts in (("train", articles[10:]), ("validation", articles[5:10]), ("test", articles[:5])):
        lines = [line for a in arts for line in a.split("\n")]
        datasets.Dataset.from_dict({"text": lines}).to_parquet(str(wt / f"{split}-00000-of-00001.parquet"))
    rp = tmp_path / "redpajama"  # RedPajama-Data-1T-Sample: <subset>_sample.jsonl at the root
    rp.mkdir()
    for k, subset in enumerate(["arxiv", "book", "c4", "github", "stackexchange", "wikipedia"]):
        with open(rp / f"{subset}_sample.jsonl", "w") as fh:
            for d in news[k * 50 : (k + 1) * 50]:
                fh.write(json.dumps({"text": d, "meta": {"source": subset}}) + "\n")
    return {"c4": c4, "wikitext2": tmp_path / "wikitext", "redpajama": rp}


@pytest.mark.parametrize("source", ["c4", "wikitext2", "redpajama"])
def test_hub_layout_fixtures_load(source, hub_fixtures, embedded_tokenizer, shared_cache):
    cfg = compose_config(f"calibration={source}", f"datasets.{source}={hub_fixtures[source]}",
                         "calibration.num_samples=8", "calibration.seq_len=64", "calibration.held_out_samples=4")
    calib = build_calibration(cfg, embedded_tokenizer, shared_cache)
    assert calib.windows.shape == (8, 64) and calib.held_out.shape == (4, 64)
    if source == "redpajama":  # every subset holds out its own last documents
        calib_text, held_text = source_texts(cfg, "redpajama", shared_cache)
        news = corpora.news_stories()
        held_docs = [d for k in range(6) for d in news[k * 50 : (k + 1) * 50][-5:]]
        calib_docs = [d for k in range(6) for d in news[k * 50 : (k + 1) * 50][:-5]]
        assert all(d in held_text for d in held_docs)
        # (the Lee corpus repeats a few stories: one of them sits inside a calibration story by content)
        repeated = [d for d in held_docs if any(d in c for c in calib_docs)]
        assert len(repeated) <= 1 and all(d not in calib_text for d in held_docs if d not in repeated)
        return
    ev = eval_windows(source, compose_config(f"datasets.{source}={hub_fixtures[source]}", "eval.perplexity.seq_len=64",
                                            "eval.perplexity.max_windows=4"), embedded_tokenizer, shared_cache)
    assert ev.windows.shape == (4, 64)


def test_hub_unreachable_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"datasets.c4=hf://datasets/allenai/c4 needs the Hugging Face hub, but HF_HUB_OFFLINE is set"):
        corpora.check_hub_root("hf://datasets/allenai/c4", "datasets.c4")


def test_jsonl_file_source_reads_the_field_and_holds_out_documents(tmp_path, embedded_tokenizer, shared_cache):
    news = corpora.news_stories()
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "body": {"text": d}}) for i, d in enumerate(news[:100])) + "\n")
    cfg = compose_config("calibration=jsonl_file", f"calibration.path={path}", "calibration.field=body.text",
                         "calibration.num_samples=8", "calibration.seq_len=64", "calibration.held_out_samples=4")
    calib = build_calibration(cfg, embedded_tokenizer, shared_cache)
    assert calib.windows.shape == (8, 64) and calib.held_out.shape == (4, 64)
    calib_text, held_text = source_texts(cfg, "jsonl_file", shared_cache)
    assert news[99] in held_text and news[99] not in calib_text and news[0] in calib_text
    with pytest.raises(ConfigError, match=r"calibration.field='content' is missing in the first record .*its fields: body, id"):
        compose_config("calibration=jsonl_file", f"calibration.path={path}", "calibration.field=content")


def test_missing_fixture_file_names_the_layout(tmp_path):
    (tmp_path / "en").mkdir()
    with pytest.raises(ConfigError, match="missing en/c4-train.00000-of-01024.json.gz"):
        corpora.hub_documents("c4", "train", str(tmp_path), "datasets.c4")

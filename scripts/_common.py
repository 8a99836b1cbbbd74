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


def report_header(title: str, setting: str, env: dict, command: str) -> list[str]:
    """The opening lines of a generated docs page: what was measured, where, and how to redo it."""
    return [f"# {title}", "", f"{setting}, {env['threads']} threads, {env['device']}, torch {env['torch']}. Regenerate with",
            "", f"    {command}".rstrip(), ""]

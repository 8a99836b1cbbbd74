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


def run_or_reuse(name: str, overrides: list[str], runs_dir: Path) -> dict:
    """The run in runs_dir/name: reused when its results.json says finished, (re)run otherwise, so a
    report script interrupted halfway continues where it stopped."""
    from pruning_lab.cache import read_json
    from pruning_lab.pipeline import run

    out = runs_dir / name
    r = read_json(out / "results.json")
    if r and r.get("status") == "finished":
        return r
    return run(compose(overrides), out)


def write_page(path: str, lines: list[str]) -> None:
    """Write a generated docs page and echo it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def page_arguments(doc: str, out: str, runs_dir: str, add=None):
    """Parse the usual options of a docs-page script (--out, --runs-dir, plus `add(parser)`) and
    switch logging on: the scripts narrate long runs."""
    import argparse
    import logging

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=out)
    ap.add_argument("--runs-dir", default=runs_dir)
    if add is not None:
        add(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return args

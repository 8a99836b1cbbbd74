"""`pruning-lab-cache list|clear`: what the shared cache holds, and removing it.

    pruning-lab-cache list                     # every item: kind, key, size, age, what it is
    pruning-lab-cache clear self_generated     # remove one kind (models, corpora, dense_ppl, self_generated, ...)
    pruning-lab-cache clear --all              # remove everything
    pruning-lab-cache --cache-dir DIR list     # another cache folder (default: PRUNING_LAB_CACHE or ~/.cache/pruning_lab)

Each item is removed under its own lock, so a sweep job writing it at the same moment either
finishes first or finds it gone and recomputes it. Lock files themselves stay (they are empty):
removing a lock another process waits on would break the mutual exclusion.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .cache import file_lock, read_json, resolve_cache_dir
from .errors import ConfigError


@dataclass
class Item:
    kind: str
    key: str
    paths: list[Path]  # the item itself and its sidecar description, if any
    size: int
    modified: float
    about: str


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _about(kind: str, sidecar: Optional[dict], path: Path) -> str:
    if kind == "self_generated" and sidecar:
        s = sidecar.get("settings", {})
        return (f"{sidecar.get('count')} samples x {sidecar.get('seq_len')} tokens, first token {s.get('first_token')}, "
                f"temperature {s.get('temperature')}, top-k {s.get('top_k')}, seed {s.get('seed')}")
    if kind == "dense_ppl":
        data = read_json(path) or {}
        return f"dense perplexity {data.get('ppl', float('nan')):.3f}"
    if kind == "dense_zeroshot":
        scores = (read_json(path) or {}).get("scores", {})
        return "dense zero-shot: " + ", ".join(f"{t} acc {v.get('acc', float('nan')):.3f}" for t, v in scores.items())
    if kind == "zeroshot_tasks":
        counts = (read_json(path / "manifest.json") or {}).get("counts", {})
        return "offline lm-eval tasks: " + ", ".join(f"{t} {n} items" for t, n in counts.items())
    if kind == "models":
        return "dequantised embedded model"
    if kind == "corpora":
        return "extracted embedded text"
    return (sidecar or {}).get("kind", "")


def items(root: Path) -> list[Item]:
    out = []
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries = [p for p in kind_dir.iterdir() if not p.name.startswith(".") and p.suffix != ".lock"]
        stems_with_data = {p.stem for p in entries if p.suffix != ".json"}
        for p in sorted(entries):
            if p.suffix == ".json" and p.stem in stems_with_data:
                continue  # a sidecar: listed with its item
            sidecar_path = p.with_suffix(".json") if p.suffix != ".json" else None
            paths = [p] + ([sidecar_path] if sidecar_path is not None and sidecar_path.exists() else [])
            sidecar = read_json(sidecar_path) if sidecar_path is not None else None
            out.append(Item(kind_dir.name, p.stem if p.is_file() else p.name, paths, sum(_size(q) for q in paths),
                            p.stat().st_mtime, _about(kind_dir.name, sidecar, p)))
    return out


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def list_items(root: Path) -> str:
    found = items(root)
    if not found:
        return f"{root}: empty"
    now = time.time()
    lines = [f"{root}", f"{'kind':<16}{'key':<40}{'size':>11}{'age':>8}  what"]
    for it in found:
        lines.append(f"{it.kind:<16}{it.key[:39]:<40}{human(it.size):>11}{_age(now - it.modified):>8}  {it.about}")
    totals: dict[str, int] = {}
    for it in found:
        totals[it.kind] = totals.get(it.kind, 0) + it.size
    lines.append("total: " + ", ".join(f"{k} {human(v)}" for k, v in totals.items()) + f"; all {human(sum(totals.values()))}")
    return "\n".join(lines)


def clear(root: Path, kinds: list[str], everything: bool) -> tuple[int, int]:
    found = items(root)
    known = sorted({it.kind for it in found})
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ConfigError(f"no cached items of kind {', '.join(unknown)} in {root}; kinds present: {', '.join(known) or 'none'}.")
    removed = freed = 0
    for it in found:
        if not everything and it.kind not in kinds:
            continue
        with file_lock(it.paths[0].parent / f"{it.key}.lock"):
            for p in it.paths:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        removed, freed = removed + 1, freed + it.size
    return removed, freed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pruning-lab-cache", description="Show or remove pruning_lab's cached items.")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: PRUNING_LAB_CACHE or ~/.cache/pruning_lab)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list cached items with their sizes")
    p_clear = sub.add_parser("clear", help="remove cached items of the given kinds (or --all)")
    p_clear.add_argument("kinds", nargs="*", help="kinds to remove, as `list` shows them")
    p_clear.add_argument("--all", action="store_true", help="remove every cached item")
    args = parser.parse_args(argv)
    try:
        root = Path(args.cache_dir).expanduser().resolve() if args.cache_dir else resolve_cache_dir(None)
        if not root.is_dir():
            raise ConfigError(f"--cache-dir {args.cache_dir}: no such folder.")
        if args.command == "list":
            print(list_items(root))
        else:
            if not args.kinds and not args.all:
                parser.error("clear needs the kinds to remove, or --all")
            removed, freed = clear(root, args.kinds, args.all)
            print(f"removed {removed} cached items ({human(freed)}) from {root}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints of the sequential engine in the run folder, so an interrupted run resumes from its
last finished unit with results identical to an uninterrupted one.

`state.pt` (replaced atomically after every unit) holds the streams, masks, records and the
weights of blocks pruned but not yet final; each final block's weights are written once to
`block_XXXX.pt`. `config.json` is the resolved config of the run that wrote them: a resume with a
different config is refused, naming the keys that differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from .cache import atomic_save_torch as _atomic_save, atomic_write_json
from .errors import ConfigError

# keys that may differ between the run that wrote a checkpoint and the one resuming it
IGNORED_KEYS = ("resume", "threads", "cache_dir", "save_results")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_difference(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")
                  and not k.startswith(IGNORED_KEYS))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys]


class Checkpointer:
    def __init__(self, folder: Path, config: dict):
        self.folder, self.config = Path(folder), config
        self._written: set[int] = set()

    def check_config(self) -> None:
        """Refuse, before any work, a checkpoint written under another config."""
        saved = self.folder / "config.json"
        if not (self.folder / "state.pt").is_file() or not saved.is_file():
            return
        diff = config_difference(json.loads(saved.read_text()), self.config)
        if diff:
            raise ConfigError(f"resume: the checkpoint in {self.folder} was written with a different config; "
                              f"keys that differ: {'; '.join(diff)}. Rerun with the original settings, or "
                              "use a new run folder.")

    def load(self) -> Optional[dict]:
        path = self.folder / "state.pt"
        if not path.is_file():
            return None
        state = torch.load(path, weights_only=False)
        state["final_blocks"] = {j: torch.load(self.folder / f"block_{j:04d}.pt", weights_only=True)
                                 for j in state["finished"]}
        self._written = set(state["finished"])
        return state

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / "config.json", self.config)
        for j, block in state.pop("final_blocks").items():
            if j not in self._written:  # a final block never changes again: write it once
                _atomic_save(block.state_dict(), self.folder / f"block_{j:04d}.pt")
                self._written.add(j)
        _atomic_save(state, self.folder / "state.pt")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

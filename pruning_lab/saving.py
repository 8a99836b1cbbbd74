"""Saving the pruned model in Hugging Face format, so that it can be evaluated again without
re-pruning (`pruning-lab-eval RUN_DIR`) or loaded by any other tool.

Zeros are stored as zeros (no sparse format): the folder reloads with `from_pretrained` anywhere.
`pruning_lab.json` beside the weights records the measured sparsity at save time; the eval entry
measures it again on reload and refuses a folder whose sparsity differs (a wrong or damaged folder).
The folder is written to a temporary sibling and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .cache import atomic_directory

log = logging.getLogger(__name__)

MANIFEST = "pruning_lab.json"


def save_model(model, tokenizer, folder: Path, sparsity: dict) -> dict:
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"sparsity": sparsity}, indent=2))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    log.info("Saved the pruned model to %s (%.1f MiB)", folder, size / 2**20)
    return {"path": str(folder), "sparsity": sparsity.get("overall"), "bytes": size}


def recorded_sparsity(folder: Path) -> float | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())["sparsity"].get("overall")

"""On-disk cache shared by runs and sweep jobs: keyed by fingerprints, written atomically, locked.

Every cached item lives in its own file or folder under `cache_dir/<kind>/<key>`. Writers take an
exclusive `flock` on `<key>.lock` so that parallel sweep jobs compute an item once; they write into a
temporary sibling and `os.replace` it into place, so readers never see a half-written item.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError


def resolve_cache_dir(configured: str | None) -> Path:
    """`PRUNING_LAB_CACHE` wins over the config; `~` is expanded; the folder must be writable."""
    raw = os.environ.get("PRUNING_LAB_CACHE") or configured or "~/.cache/pruning_lab"
    path = Path(os.path.expanduser(str(raw))).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise ConfigError(
            f"cache_dir={path} is not writable ({exc.strerror}). Set cache_dir=<a writable folder> "
            "or the PRUNING_LAB_CACHE environment variable."
        ) from exc
    return path


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (sorted keys), used as a cache key."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock held for the duration of the block (blocks until available)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _umask() -> int:
    # reading the umask means setting it; done once at import, not around every write, so no other
    # thread ever creates a file in the instant the process umask is 0
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def default_mode(directory: bool = False) -> int:
    """The permissions an ordinary open()/mkdir() would give. mkstemp/mkdtemp create private (0600 /
    0700) items; after the rename they are results and shared caches other users must read."""
    return (0o777 if directory else 0o666) & ~_UMASK


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_torch(obj: Any, path: Path) -> None:
    """`torch.save` into a temporary sibling, then one rename: readers never see a partial file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (a corrupt item is recomputed)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def cached_value(path: Path, field: str, key_parts: tuple, compute) -> tuple[Any, bool]:
    """`{field: value, "key": [...]}` in the JSON file `path`: read when present, else computed once
    under the item's lock (parallel jobs wait and read) and written atomically. Returns (value, hit)."""
    hit = read_json(path)
    if hit is not None and field in hit:
        return hit[field], True
    with file_lock(path.with_suffix(".lock")):
        hit = read_json(path)
        if hit is not None and field in hit:
            return hit[field], True
        value = compute()
        atomic_write_json(path, {field: value, "key": [str(p) for p in key_parts]})
        return value, False


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(default_mode(directory=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

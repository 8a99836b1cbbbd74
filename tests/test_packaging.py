"""The installed (non-editable) package must carry conf/: every YAML must match a package-data glob."""

import fnmatch
import tomllib

from .conftest import REPO


def test_every_config_file_ships_in_the_wheel():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    tool = meta["tool"]["setuptools"]
    assert tool["package-dir"]["pruning_lab.conf"] == "conf"
    globs = tool["package-data"]["pruning_lab.conf"]
    files = [p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")]
    assert files and all(any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs) for f in files)
    assert meta["project"]["scripts"]["pruning-lab"] == "pruning_lab.cli:main"

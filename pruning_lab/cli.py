"""The `pruning-lab` entry point: a Hydra app over the top-level conf/ folder."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
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


LAUNCHER_PLUGINS = {  # hydra/launcher option -> (plugin module, pip package)
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "local_parallel": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "local_submitit": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def missing_launcher(argv: list[str]) -> str | None:
    """The install hint when the command line picks a launcher whose Hydra plugin is not installed
    (Hydra itself would only say that the config cannot be found)."""
    import importlib.util

    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra/launcher" and value in LAUNCHER_PLUGINS:
            module, package = LAUNCHER_PLUGINS[value]
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return f"hydra/launcher={value} needs the {package} plugin: pip install {package}"
    return None


def main() -> None:
    problem = missing_launcher(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    app()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def app(cfg: DictConfig) -> None:
    from .pipeline import run

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if sweep else None
    name = hc.job.override_dirname or out.name
    try:
        run(cfg, out, group=f"sweep-{Path(hc.sweep.dir).parent.name}-{group}" if sweep else None, job_name=name)
    except ConfigError as exc:
        log.error("%s", exc)
        if not sweep:  # a clean one-line error for bad input, not a traceback; non-zero exit for CI
            sys.exit(2)
        return  # in a sweep: this job is recorded as failed in its results.json; the others go on
    except Exception:
        if not sweep:
            raise
        log.exception("job %s failed (recorded in %s); the sweep goes on", name, out / "results.json")
        return
    log.info("results: %s", out / "results.json")


if __name__ == "__main__":
    main()

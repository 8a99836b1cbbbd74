"""Experiment tracking: Weights & Biases (offline by default) beside results.json.

results.json stays the source of truth; the W&B run mirrors it: the resolved config, per-unit curves
against a `block` step metric (reconstruction error before/after on calibration and held-out
windows, sparsity, optimiser loss), summary metrics with the same values as results.json, and a
table of blocks. Runs of one sweep share a `group` (the sweep folder); `job_type` names the
reconstruction preset. The W&B run is finished in every case, with exit code 1 when the job failed,
so a sweep goes on. Files go into the run folder (`RUN_DIR/wandb`).
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

log = logging.getLogger(__name__)

MEASURED = ("calib", "held_out", "held_out_generated")


def flat_summary(data: dict) -> dict[str, Any]:
    """The headline numbers of a results.json, flattened to `section/name` keys (what W&B shows
    in its run table and what the report reads back)."""
    out: dict[str, Any] = {"status": data.get("status")}
    blocks = [b for b in data.get("blocks") or [] if b.get("recon_error")]
    for name in MEASURED:
        values = [b["recon_error"][name]["after"] for b in blocks if name in b["recon_error"]]
        if values:
            out[f"recon_error/{name}_last"] = values[-1]
            out[f"recon_error/{name}_mean"] = sum(values) / len(values)
    for ds, p in (data.get("perplexity") or {}).items():
        out[f"perplexity/{ds}"] = p.get("sparse")
        if p.get("dense") is not None:
            out[f"perplexity/{ds}_dense"] = p["dense"]
    zs = data.get("zeroshot") or {}
    for task, t in (zs.get("tasks") or {}).items():
        for key in ("acc", "acc_norm"):
            if t["sparse"].get(key) is not None:
                out[f"zeroshot/{task}/{key}"] = t["sparse"][key]
    if (zs.get("mean") or {}).get("sparse") is not None:
        out["zeroshot/mean"] = zs["mean"]["sparse"]
        if zs["mean"].get("dense") is not None:
            out["zeroshot/mean_dense"] = zs["mean"]["dense"]
    sp = data.get("sparsity") or {}
    if sp.get("overall") is not None:
        out["sparsity/overall"] = sp["overall"]
    for k, v in (data.get("timing") or {}).items():
        out[f"time/{k}"] = v
    return {k: v for k, v in out.items() if v is not None}


def block_row(block: dict) -> dict[str, Any]:
    """One block's curve point."""
    row: dict[str, Any] = {"block": block["index"], "unit/sparsity": block.get("sparsity"), "unit/seconds": block.get("seconds")}
    for name, e in (block.get("recon_error") or {}).items():
        for when in ("before", "after"):
            if e.get(when) is not None:
                row[f"unit/{name}_{when}"] = e[when]
    opt = [o for o in block.get("optimised") or [] if o.get("loss_last") is not None]
    if opt:
        row["unit/loss_first"], row["unit/loss_last"] = opt[-1].get("loss_first"), opt[-1]["loss_last"]
    return {k: v for k, v in row.items() if v is not None}


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return auth is not None


def resolve_mode(configured: str) -> str:
    """WANDB_MODE wins over logger.mode; online without credentials falls back to offline."""
    mode = os.environ.get("WANDB_MODE") or configured
    if mode == "online" and not _has_credentials():
        log.warning("W&B online mode asked for, but no credentials (WANDB_API_KEY or `wandb login`): logging "
                    "offline instead; `wandb sync RUN_DIR/wandb/offline-run-*` uploads it later")
        return "offline"
    return mode


class NoTracker:
    def on_block(self, block: dict) -> None:
        pass

    def finish(self, data: dict, failed: bool) -> None:
        pass


class WandbTracker:
    def __init__(self, lcfg: DictConfig, config: dict, output_dir: Path, group: Optional[str], job_type: str, name: str):
        import wandb

        self.mode = resolve_mode(lcfg.mode)
        self.run = wandb.init(
            project=lcfg.project, entity=lcfg.entity, group=lcfg.group or group, job_type=lcfg.job_type or job_type,
            name=name, tags=list(lcfg.tags), config=config, dir=str(output_dir), mode=self.mode, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("block")
        self.run.define_metric("unit/*", step_metric="block")
        self.logged: set[int] = set()
        log.info("W&B run %s (%s) in %s", self.run.id, self.mode, output_dir / "wandb")

    def on_block(self, block: dict) -> None:
        if block["index"] not in self.logged:  # a resumed run re-reports finished blocks: log each once
            self.logged.add(block["index"])
            self.run.log(block_row(block))

    def finish(self, data: dict, failed: bool) -> None:
        import wandb

        try:
            for b in data.get("blocks") or []:
                self.on_block(b)
            self.run.summary.update(flat_summary(data))
            rows = [block_row(b) for b in data.get("blocks") or []]
            if rows:
                columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "block", k))
                self.run.log({"blocks": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
        finally:
            self.run.finish(exit_code=1 if failed else 0)


def make_tracker(cfg: DictConfig, config: dict, output_dir: Optional[Path], group: Optional[str], name: str):
    if cfg.logger.name != "wandb" or output_dir is None or resolve_mode(cfg.logger.mode) == "disabled":
        return NoTracker()
    return WandbTracker(cfg.logger, config, output_dir, group, cfg.reconstruction.name, name)


# ---------------------------------------------------------------- reading an offline run back


def _log_records(path: Path):
    """Records of a `.wandb` file: a 7-byte header, then a LevelDB-style log of 32 KiB blocks whose
    records carry a 7-byte header (CRC, little-endian length, type: full / first / middle / last)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def read_offline_run(folder: Path) -> dict:
    """What an offline W&B run recorded: config, final summary, history rows, group, job type, exit
    code. `folder` is a run folder (RUN_DIR) or its `wandb/offline-run-*` folder."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(folder).glob("**/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{folder}: no offline W&B run")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "group": None, "job_type": None, "exit_code": None}
    for raw in _log_records(files[-1]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["job_type"] = rec.run.run_group, rec.run.job_type
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                path = [item.key] if item.key else list(item.nested_key)
                node = out["summary"]
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out

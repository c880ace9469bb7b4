"""Resuming, checked in one place before anything starts: which checkpoint this run continues,
and whether it may.

`plan(cfg, world)` finds the checkpoint (run.resume: auto = the latest complete one, never, or a
PATH) and compares the config it was saved with to this run's: a difference that breaks resuming
(model shape, sequence length, batch layout, data, seed, precision, ZeRO layout, ranks) is
refused with one line; any other (steps, LR, log cadence, LAI options) is allowed and listed in
a one-line note. The components' own checks on load (the loader's data fingerprint) stay as a
guard; a component whose saved state no longer fits a changed option (the LAI selector's cached
val reference) starts that part afresh.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.train import checkpoint

# Differences that make a checkpoint unusable (refused); every other difference is noted.
# run.out_dir / run.resume are where and how, not what: never compared. A name ending in "." is
# a section (every key in it), any other name one key. lai.mixing decides how seq_ids and the
# loader state are laid out; its step size, smoothing, floor and cadence may change.
RESUME_BREAKING = ("model.", "data.", "run.seed", "train.micro_batch", "train.grad_accum",
                   "train.zero_stage", "train.precision", "train.offload_optimizer",
                   "train.offload_params", "lai.mixing", "world")
RESUME_IGNORED = ("run.out_dir", "run.resume")


def _in(key: str, names: tuple[str, ...]) -> bool:
    return any(key.startswith(n) if n.endswith(".") else key == n for n in names)


@dataclass
class Resume:
    path: Path
    step: int
    changes: list[str]             # allowed differences, "key: old -> new"

    def note(self) -> str:
        """One line: what was resumed, and what changed since it was saved."""
        changed = f"; changed settings: {'; '.join(self.changes)}" if self.changes else ""
        return f"resumed from {self.path} at step {self.step}{changed}"


def plan(cfg: Config, world: int) -> Resume | None:
    """The checkpoint to resume from (None = fresh start); UserError (one line) if it cannot be
    resumed with this config and world size."""
    run_dir, mode = Path(cfg.run.out_dir), cfg.run.resume
    if mode == "never":
        if checkpoint.latest(run_dir) is not None:
            raise UserError(f"run.resume: never, but {checkpoint.root(run_dir)} already holds "
                            "checkpoints; use run.resume=auto or a new run.out_dir")
        return None
    path = checkpoint.latest(run_dir) if mode == "auto" else Path(mode)
    if path is None:
        return None
    meta = checkpoint.read_meta(path)
    breaking, allowed = resume_changes({**meta["config"], "world": meta["world"]},
                                       {**cfg.to_dict(), "world": world})
    if breaking:
        raise UserError(f"run.resume: {path} was saved with a different config that cannot be "
                        f"resumed ({'; '.join(breaking)}); restore those values or use a new "
                        "run.out_dir")
    return Resume(path, int(meta["step"]), allowed)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg_dict: dict[str, Any]) -> str:
    """sha256 of the fields that must not change across a resume (see RESUME_BREAKING)."""
    flat = {k: v for k, v in _flatten(cfg_dict).items() if _in(k, RESUME_BREAKING)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def resume_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, allowed) differences between two `to_dict()`s (plus a "world" key), each as
    "key: old -> new" strings."""
    a, b = _flatten(old), _flatten(new)
    breaking, allowed = [], []
    for k in sorted(set(a) | set(b)):
        if _in(k, RESUME_IGNORED) or a.get(k) == b.get(k):
            continue
        line = f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        (breaking if _in(k, RESUME_BREAKING) else allowed).append(line)
    return breaking, allowed

"""Resuming, checked in one place before anything starts: which checkpoint this run continues,
and whether it may.

`plan(cfg, world)` finds the checkpoint (run.resume: auto = the latest complete one that is not
damaged, with a warning for each damaged newer one; never; or a PATH) and compares the config it
was saved with to this run's: a difference that breaks resuming (model shape, sequence length,
global batch, data, seed, precision, ZeRO layout) is refused with one line; any other (steps, LR,
log cadence, LAI options, and the number of ranks with the micro batch and accumulation that
split the same global batch) is allowed and listed in a one-line note. The components' own
checks on load (the loader's data fingerprint) stay as a guard; a component whose saved state no
longer fits a changed option (the LAI selector's cached val reference) starts that part afresh.

Another number of ranks: the loader continues the same global order from its global sample
count; ZeRO 1-3 partitions are converted once to DeepSpeed's universal checkpoint
(checkpointing.universal; `Resume.universal`), fsdp2's DCP shards reshard as they load; per-rank
members restore as TrainState says
(the ledger's position from rank 0's file; RNG and the LAI val cache start afresh).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.config.moved import migrate
from pipeline.errors import UserError
from pipeline.train.checkpointing import checkpoint

# Differences that make a checkpoint unusable (refused); every other difference is noted.
# run.out_dir / run.resume / data.verify are where and how, not what: never compared. A name
# ending in "." is a section (every key in it), any other name one key. lai.mixing.kind decides
# how seq_ids and the loader state are laid out (lai.mixing.groups: over which arms) and what the
# mixing state means; the mixer's step size, smoothing, floor, averaging and cadence may change.
RESUME_BREAKING = ("model.", "data.", "run.seed", "train.global_batch", "train.backend",
                   "train.zero_stage", "train.precision", "train.offload_optimizer",
                   "train.offload_params", "lai.mixing.kind", "lai.mixing.groups")
RESUME_IGNORED = ("run.out_dir", "run.resume", "run.continue_from", "data.verify")


def _in(key: str, names: tuple[str, ...]) -> bool:
    return any(key.startswith(n) if n.endswith(".") else key == n for n in names)


@dataclass
class Resume:
    path: Path
    step: int
    changes: list[str]             # allowed differences, "key: old -> new"
    saved_world: int = 1           # ranks the checkpoint was saved with
    world: int = 1                 # ranks of this run
    universal: bool = False        # ZeRO partitions of another world size: load CKPT/universal
    conversion: str = ""           # what the universal conversion did (set when it ran)

    @property
    def same_world(self) -> bool:
        return self.saved_world == self.world

    def note(self) -> str:
        """One line: what was resumed, and what changed since it was saved."""
        changed = f"; changed settings: {'; '.join(self.changes)}" if self.changes else ""
        elastic = "" if self.same_world else (
            "; same global batch, sliced anew; per-rank RNG and LAI val cache start afresh"
            + (f"; {self.conversion}" if self.conversion else ""))
        return f"resumed from {self.path} at step {self.step}{changed}{elastic}"


def plan(cfg: Config, world: int, *, warn: bool = True) -> Resume | None:
    """The checkpoint to resume from (None = fresh start); UserError (one line) if it cannot be
    resumed with this config and world size."""
    run_dir, mode = Path(cfg.run.out_dir), cfg.run.resume
    if mode == "never":
        if checkpoint.latest(run_dir) is not None:
            raise UserError(f"run.resume: never, but {checkpoint.root(run_dir)} already holds "
                            "checkpoints; use run.resume=auto or a new run.out_dir")
        return None
    path = _intact(run_dir, warn) if mode == "auto" else Path(mode)
    if path is None:
        return None
    meta = checkpoint.read_meta(path)
    if mode != "auto" and (problem := checkpoint.damage(path)):
        raise UserError(f"run.resume: {path}: {problem}")
    saved_world = int(meta["world"])
    breaking, allowed = resume_changes({**meta["config"], "world": saved_world},
                                       {**cfg.to_dict(), "world": world})
    if breaking:
        raise UserError(f"run.resume: {path} was saved with a different config that cannot be "
                        f"resumed ({'; '.join(breaking)}); restore those values or use a new "
                        "run.out_dir")
    return Resume(path, int(meta["step"]), allowed, saved_world, world,
                  universal=needs_universal(cfg, saved_world, world))


def needs_universal(cfg: Config, saved_world: int, world: int) -> bool:
    """Whether a checkpoint of `saved_world` ranks loads on `world` through DeepSpeed's universal
    form: ZeRO 1-3 partitions of another world size (fsdp2's DCP reshards on load)."""
    return (saved_world != world and cfg.train.zero_stage >= 1
            and cfg.train.backend == "deepspeed")


def _intact(run_dir: Path, warn: bool = True) -> Path | None:
    """The newest complete checkpoint that is not damaged (checkpoint.damage), after one warning
    line per damaged newer one (from the first rank only: every rank finds the same); None if
    there is no complete checkpoint; UserError if every one is damaged."""
    complete = checkpoint.complete(run_dir)[::-1]          # newest first
    for path, older in zip(complete, [*complete[1:], None]):
        problem = checkpoint.damage(path)
        if problem is None:
            return path
        if older is None:
            raise UserError(f"run.resume: {path}: {problem}, and no older complete checkpoint is "
                            f"left; move {checkpoint.root(run_dir)} away to start over")
        if warn and os.environ.get("RANK", "0") == "0":
            print(f"warning: run.resume: {path}: {problem}; falling back to {older}",
                  file=sys.stderr, flush=True)
    return None


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
    flat = {k: v for k, v in _flatten(cfg_dict).items()
            if _in(k, RESUME_BREAKING) and not _in(k, RESUME_IGNORED)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def _global_batch(flat: dict[str, Any]) -> int:
    """The global batch of a flattened config (one saved before it was always filled: the
    product of micro batch, accumulation and ranks)."""
    return (flat.get("train.global_batch") or flat["train.micro_batch"] * flat["train.grad_accum"]
            * flat["world"])


def resume_changes(old: dict[str, Any], new: dict[str, Any],
                   breaking_keys: tuple[str, ...] = RESUME_BREAKING) -> tuple[list[str], list[str]]:
    """(breaking, allowed) differences between two `to_dict()`s (plus a "world" key), each as
    "key: old -> new" strings; `breaking_keys` as RESUME_BREAKING. A checkpoint saved with the
    old flat lai keys is compared in the new layout (pipeline.config.moved)."""
    a, b = _flatten(migrate(old)[0]), _flatten(new)
    a["train.global_batch"], b["train.global_batch"] = _global_batch(a), _global_batch(b)
    for k, v in _flatten(Config().to_dict()).items():   # saved before key k existed: the
        a.setdefault(k, v)                                # default it had (train.backend:
        b.setdefault(k, v)                                # deepspeed; ZeRO buckets: 0)
    breaking: list[str] = []
    allowed: list[str] = []
    for k in sorted(set(a) | set(b)):
        if _in(k, RESUME_IGNORED) or a.get(k) == b.get(k):
            continue
        line = f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        (breaking if _in(k, breaking_keys) else allowed).append(line)
    return breaking, allowed

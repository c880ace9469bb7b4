"""Checkpoints of a TrainState (pipeline.train.state), complete only when every rank has written.

Layout of RUN/checkpoints/step_XXXXXXXX/ (XXXXXXXX = optimizer steps done):
    DeepSpeed's files (model/optimizer states, ZeRO partitions; client state = the TrainState's
                       global members under CLIENT_KEY)
    rank-XXXXX.pt      this rank's members: RNG states, ledger and LAI state, ... (torch.save)
    complete.json      written last, by rank 0, after a barrier: {"step", "world", "config",
                       "config_hash", ...}; its presence = the checkpoint is complete and resumable

`latest(run_dir)` is the complete checkpoint with the most steps; incomplete ones (a run killed
while saving) are ignored and removed by the next successful save.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.comm import Comm
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write, atomic_write_json
from pipeline.train.state import TrainState
from pipeline.train.universal import UNIVERSAL, repairing

MARKER = "complete.json"
CLIENT_KEY = "lai_train"     # our global state, under one key (DeepSpeed drops its own key names)
_TAG = re.compile(r"step_(\d{8})")


def root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag(step: int) -> str:
    return f"step_{step:08d}"


def _all(run_dir) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) of every checkpoint directory, by step."""
    r = root(run_dir)
    if not r.is_dir():
        return []
    out = []
    for p in r.iterdir():
        m = _TAG.fullmatch(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p, (p / MARKER).is_file()))
    return sorted(out)


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the most steps, or None."""
    done = [p for _, p, ok in _all(run_dir) if ok]
    return done[-1] if done else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The marker of a checkpoint directory; UserError if it is not a complete checkpoint."""
    p = Path(path)
    if not (p / MARKER).is_file():
        raise UserError(f"{p}: not a complete checkpoint (no {MARKER}; the run was killed while "
                        f"saving it, or this is not a checkpoint directory)")
    try:
        return json.loads((p / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{p / MARKER}: unreadable checkpoint marker: {e}") from None


def save(state: TrainState, run_dir: str | Path, step: int, *, meta: dict, keep: int) -> Path:
    """Collective: every rank writes its part, then rank 0 marks the checkpoint complete and
    removes all but the newest `keep` complete ones (and stale incomplete ones)."""
    path = root(run_dir) / tag(step)
    global_state, rank_state = state.state_dicts()
    state.engine.save_checkpoint(str(root(run_dir)), tag=tag(step),
                                 client_state={CLIENT_KEY: global_state}, save_latest=False)
    with atomic_write(path / f"rank-{state.rank:05d}.pt") as f:
        torch.save(rank_state, f)
    comm = Comm.resolve()
    comm.barrier()                                # every rank's files are on disk
    if state.rank == 0:
        atomic_write_json(path / MARKER, {"step": step, **meta})
        _prune(run_dir, keep, newest=step)
    comm.barrier()
    return path


def _prune(run_dir, keep: int, newest: int) -> None:
    entries = _all(run_dir)
    complete = [p for _, p, ok in entries if ok]
    doomed = complete[:-keep] + [p for s, p, ok in entries if not ok and s < newest]
    for p in doomed:
        (p / MARKER).unlink(missing_ok=True)   # incomplete first: never half-deleted "complete"
        shutil.rmtree(p, ignore_errors=True)


def load(state: TrainState, path: str | Path, *, same_world: bool = True,
         universal: bool = False) -> None:
    """Restore the engine and every member of `state` from checkpoint `path`. Saved with another
    number of ranks (same_world=False): the engine from `path`/universal when `universal`
    (pipeline.train.universal; the engine was built with checkpoint.load_universal), per-rank
    members from rank 0's file as TrainState says."""
    p = Path(path)
    load_dir, tag = (p, UNIVERSAL) if universal else (p.parent, p.name)
    client = getattr(state.engine.optimizer, "optimizer", state.engine.optimizer)
    with repairing(client) if universal else contextlib.nullcontext():
        load_path, client_state = state.engine.load_checkpoint(str(load_dir), tag=tag,
                                                               load_optimizer_states=True,
                                                               load_lr_scheduler_states=False)
    if load_path is None:
        raise UserError(f"{p}: DeepSpeed could not load this checkpoint")
    rank_file = p / f"rank-{state.rank if same_world else 0:05d}.pt"
    if not rank_file.is_file():
        raise UserError(f"{rank_file}: missing (saved with a different number of ranks?)")
    state.load_state_dicts((client_state or {}).get(CLIENT_KEY, {}),
                           torch.load(rank_file, weights_only=False), str(p),
                           same_world=same_world)

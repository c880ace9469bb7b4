"""Checkpoints of a TrainState (checkpointing.state), complete only when every rank has written.

Layout of RUN/checkpoints/step_XXXXXXXX/ (XXXXXXXX = optimizer steps done):
    DeepSpeed's files (model/optimizer states, ZeRO partitions; client state = the TrainState's
                       global members under CLIENT_KEY), or under train.backend=fsdp2
                       dcp/ + client.pt (pipeline.train.fsdp: the same two engine calls)
    rank-XXXXX.pt      this rank's members: RNG states, ledger and LAI state, ... (torch.save)
    complete.json      written last, by rank 0, after a barrier: {"step", "world", "config",
                       "config_hash", "files", ...}; its presence = the checkpoint is complete

`latest(run_dir)` is the complete checkpoint with the most steps; incomplete ones (a run killed
while saving) are ignored and removed by the next successful save, as are checkpoints newer than
it (left by an attempt that a resume from an older checkpoint abandoned). `damage(path)` says why
a complete checkpoint can no longer be loaded (run.resume=auto then takes the one before it).
Every file is loaded with pipeline.train.checkpointing.safe_load: nothing in a checkpoint can run code.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipeline.comm import Comm
from pipeline.errors import UserError, disk_full, fs_fault
from pipeline.fsutil import atomic_write, atomic_write_json
from pipeline.train.checkpointing import safe_load
from pipeline.train.fsdp import DCP_DIR
from pipeline.train.checkpointing.state import TrainState
from pipeline.train.checkpointing.universal import UNIVERSAL, repairing

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


def complete(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints, by step."""
    return [p for _, p, ok in _all(run_dir) if ok]


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the most steps, or None."""
    done = complete(run_dir)
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
    removes all but the newest `keep` complete ones (and stale ones, see the module doc)."""
    path = root(run_dir) / tag(step)
    comm = Comm.resolve()
    if state.rank == 0:                           # a directory of this name from an abandoned
        (path / MARKER).unlink(missing_ok=True)   # attempt is not complete while rewritten
    comm.barrier()
    global_state, rank_state = state.state_dicts()
    try:
        state.engine.save_checkpoint(str(root(run_dir)), tag=tag(step),
                                     client_state={CLIENT_KEY: global_state}, save_latest=False)
        with atomic_write(path / f"rank-{state.rank:05d}.pt") as f:
            torch.save(rank_state, f)
    except (OSError, RuntimeError) as e:
        # a failed write stops this rank at once; the others wait in a collective until the
        # launcher ends them (deepspeed and torchrun stop every rank when one exits)
        _abandon(path, run_dir, _write_fault(e, path), main=state.rank == 0)
    comm.barrier()                                # every rank's files are on disk
    if state.rank == 0:
        files = sorted(str(q.relative_to(path)) for q in path.rglob("*") if q.is_file())
        atomic_write_json(path / MARKER, {"step": step, **meta, "files": files})
        _prune(run_dir, keep, newest=step)
    comm.barrier()
    return path


def _write_fault(e: BaseException, path: Path) -> str:
    """What went wrong writing checkpoint `path`, as `<file>: <why> (errno ...)` where known
    (torch.save reports a full disk as a RuntimeError without errno: the free space tells)."""
    if fault := fs_fault(e):
        return fault
    if disk_full(path):
        return f"{path}: No space left on device (errno ENOSPC)"
    return f"{path}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"


def _abandon(path: Path, run_dir, why: str, *, main: bool) -> None:
    """A checkpoint this rank could not write: removed if this is rank 0 (it never counted: no
    marker; else the next save removes it); UserError naming the fault and the resume point."""
    if main:
        shutil.rmtree(path, ignore_errors=True)
    before = latest(run_dir)
    raise UserError(f"{why}; checkpoint {path.name} was not saved and training stopped; "
                    f"{f'the run resumes from {before}' if before else 'no checkpoint was saved'}"
                    " when run again with the same command (free space or fix the fault first)")


def _prune(run_dir, keep: int, newest: int) -> None:
    entries = _all(run_dir)
    kept = [p for s, p, ok in entries if ok and s <= newest][-keep:]
    for _, p, _ in entries:
        if p not in kept:
            (p / MARKER).unlink(missing_ok=True)   # unmarked first: never half-deleted "complete"
            shutil.rmtree(p, ignore_errors=True)


def damage(path: str | Path) -> str | None:
    """Why the complete checkpoint `path` cannot be loaded, found without loading it (the same on
    every rank), or None: an unreadable marker, a file it lists missing, a .pt file whose zip
    index (at its end: a truncated file has none) or pickled structure is unreadable, or (fsdp2)
    a DCP shard shorter than its metadata says."""
    p = Path(path)
    try:
        meta = json.loads((p / MARKER).read_text())
        listed = meta.get("files", [])         # (older checkpoints list none)
        meta["step"], meta["world"], meta["config"]
    except (OSError, ValueError, AttributeError, KeyError) as e:
        return f"{MARKER} is unreadable ({type(e).__name__}: {e})"
    for name in listed:
        if not (p / name).is_file():
            return f"{name} is missing"
    for f in sorted(p.glob("*.pt")):
        try:
            with zipfile.ZipFile(f) as z:
                for info in z.infolist():
                    if "/data/" not in info.filename:     # the structure, not the tensor bytes
                        z.read(info)
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            return f"{f.name} is damaged ({e})"
    return _dcp_damage(p / DCP_DIR) if (p / DCP_DIR).is_dir() else None


def _dcp_damage(folder: Path) -> str | None:
    try:
        extents = safe_load.dcp_extents(folder)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError) as e:
        return f"{folder.name}/.metadata is unreadable ({type(e).__name__}: {e})"
    for name, need in sorted(extents.items()):
        f = folder / name
        size = f.stat().st_size if f.is_file() else -1
        if size < need:
            return (f"{folder.name}/{name} is missing" if size < 0 else
                    f"{folder.name}/{name} is truncated ({size:,} of {need:,} bytes)")
    return None


def load_engine(engine, path: str | Path, *, universal: bool = False) -> dict:
    """Restore the engine (DeepSpeed or FSDPEngine: model and optimizer states) from checkpoint `path` (its
    universal form when `universal`; the engine was built with checkpoint.load_universal); its
    client state. UserError (one line) if a file cannot be read."""
    p = Path(path)
    load_dir, tag = (p, UNIVERSAL) if universal else (p.parent, p.name)
    client = getattr(engine.optimizer, "optimizer", engine.optimizer)
    safe_load.use_for(engine)
    try:
        with repairing(client) if universal else contextlib.nullcontext():
            load_path, client_state = engine.load_checkpoint(str(load_dir), tag=tag,
                                                             load_optimizer_states=True,
                                                             load_lr_scheduler_states=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{p}: cannot be loaded ({reason}); resume from an earlier checkpoint "
                        "with run.resume=PATH") from None
    if load_path is None:
        raise UserError(f"{p}: DeepSpeed could not load this checkpoint")
    return client_state or {}


def load(state: TrainState, path: str | Path, *, same_world: bool = True,
         universal: bool = False) -> None:
    """Restore the engine and every member of `state` from checkpoint `path` (UserError, one
    line, if a file cannot be read). Saved with another number of ranks (same_world=False): the
    engine from `path`/universal when `universal` (checkpointing.universal; the engine was built
    with checkpoint.load_universal), per-rank members from rank 0's file as TrainState says."""
    p = Path(path)
    client_state = load_engine(state.engine, p, universal=universal)
    rank_file = p / f"rank-{state.rank if same_world else 0:05d}.pt"
    if not rank_file.is_file():
        raise UserError(f"{rank_file}: missing (saved with a different number of ranks?)")
    state.load_state_dicts(client_state.get(CLIENT_KEY, {}), safe_load.load(rank_file),
                           str(p), same_world=same_world)

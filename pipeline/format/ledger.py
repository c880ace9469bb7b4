"""The valuation ledger: one row per trained sequence (step, seq_id, value, loss, kept,
value_norm: the value's z-score among the sequences of its global micro-batch, weight: its
tokens' weight in the step's loss against an unweighted kept token, pipeline.train.step;
segment: -1, or with lai.unit=document one row per document unit of the sequence, the index of
its document run among the sequence's DocSpans, pipeline.lai.kernels.units).

Files: RUN/ledger/rank-XXXXX/chunk-XXXXXXXX.npy, each a complete `.npy` of the structured dtype
`ROW`, written through `fsutil.atomic_write` (a killed writer leaves only a hidden temporary,
never a partial `chunk-*.npy`). Each rank writes its own directory; nothing is shared, nothing
is collective.

Resume contract (step-based, identical on every rank, so rank 0's copy in the checkpoint's client
state is enough -- DeepSpeed saves client state from rank 0 only):
- `state_dict()` first flushes the buffer, then returns `{"next_step": S}`: every row with
  step < S is on disk, and this run has appended no row with step >= S yet. Call it on *every*
  rank when checkpointing (it is what commits that rank's rows).
- `load_state_dict({"next_step": S})` deletes (or rewrites) this rank's rows with step >= S --
  written after that checkpoint by the interrupted run -- and drops the buffer. Re-training those
  steps then appends them again, so the ledger of a resumed run equals the uninterrupted one.
  `load_state_dict({"next_step": 0})` empties this rank's ledger (a fresh start in a used dir).
Call `flush()` (or `close()`) at the end of training; rows still buffered at a crash belong to
steps after the last checkpoint and are re-created on resume.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write, remove_stale_tmp

ROW = np.dtype([("step", "<i8"), ("seq_id", "<i8"), ("value", "<f8"), ("loss", "<f4"),
                ("kept", "?"), ("value_norm", "<f8"),    # value_norm: z-score within its step
                ("weight", "<f4"),                       # loss weight (lai.weighting; else kept)
                ("segment", "<i4")])                     # document run (lai.unit=document) or -1
ROW_V1 = np.dtype(ROW.descr[:5])                          # ledgers written before value_norm
ROW_V2 = np.dtype(ROW.descr[:6])                          # ledgers written before weight
ROW_V3 = np.dtype(ROW.descr[:7])                          # ledgers written before segment
_CHUNK = re.compile(r"chunk-(\d{8})\.npy")
_RANK = re.compile(r"rank-(\d{5,})")


def _array(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.numpy()
    return np.asarray(x).astype(dtype, copy=False).reshape(-1)


def _chunks(rank_dir: Path) -> list[tuple[int, Path]]:
    """(index, path) of the complete chunk files of one rank directory, by index."""
    found = []
    for p in rank_dir.iterdir() if rank_dir.is_dir() else ():
        m = _CHUNK.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _load_chunk(path: Path) -> np.ndarray:
    try:
        rows = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- any unreadable chunk is the same user-facing problem
        why = (str(e).splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable ledger chunk ({type(e).__name__}: {why})") from None
    if rows.dtype in (ROW_V1, ROW_V2, ROW_V3) and rows.ndim == 1:   # older runs' columns
        new = np.empty(rows.size, ROW)
        for name in rows.dtype.names:
            new[name] = rows[name]
        if "value_norm" not in rows.dtype.names:
            new["value_norm"] = np.nan
        if "weight" not in rows.dtype.names:
            new["weight"] = rows["kept"]
        new["segment"] = -1
        return new
    if rows.dtype != ROW or rows.ndim != 1:
        raise UserError(f"{path}: ledger chunk has dtype {rows.dtype} shape {rows.shape}, "
                        f"expected 1-D {ROW}")
    return rows


class Ledger:
    """Rank-local, buffered, chunked writer of ledger rows (see the module doc for resume)."""

    def __init__(self, run_dir: str | Path, rank: int, chunk_rows: int = 4096):
        if chunk_rows < 1:
            raise ValueError(f"Ledger: chunk_rows must be >= 1, got {chunk_rows}")
        self.dir = Path(run_dir) / "ledger" / f"rank-{rank:05d}"
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.dir)      # leftovers of a writer killed mid-chunk
        self.rank, self.chunk_rows = rank, chunk_rows
        self._buf = np.empty(chunk_rows, ROW)
        self._n = 0
        chunks = _chunks(self.dir)
        self._next_chunk = chunks[-1][0] + 1 if chunks else 0
        self._next_step = 0

    def append(self, step: int, seq_ids, values, kept, losses, value_norm=None,
               weight=None, segments=None) -> None:
        """Record one micro-batch: 1-D `seq_ids`, `values`, `kept`, `losses` (and `value_norm`,
        NaN if not given, `weight`, `kept` if not given, and `segments`, -1 if not given) of
        equal length (tensors on any device or arrays) trained at optimizer step `step`."""
        cols = {"seq_id": _array(seq_ids, np.int64), "value": _array(values, np.float64),
                "kept": _array(kept, bool), "loss": _array(losses, np.float32)}
        n = cols["seq_id"].size
        cols["value_norm"] = (np.full(n, np.nan) if value_norm is None
                              else _array(value_norm, np.float64))
        cols["weight"] = _array(cols["kept"] if weight is None else weight, np.float32)
        cols["segment"] = np.full(n, -1, np.int32) if segments is None else \
            _array(segments, np.int32)
        step = int(step)
        if any(c.size != n for c in cols.values()):
            raise ValueError("Ledger.append: lengths differ: "
                             + ", ".join(f"{k} {c.size}" for k, c in cols.items()))
        done = 0
        while done < n:
            take = min(n - done, self.chunk_rows - self._n)
            dst = self._buf[self._n:self._n + take]
            dst["step"] = step
            for k, c in cols.items():
                dst[k] = c[done:done + take]
            self._n += take
            done += take
            if self._n == self.chunk_rows:
                self.flush()
        self._next_step = max(self._next_step, step + 1)

    def flush(self) -> None:
        """Write the buffered rows (if any) as the next complete chunk file, atomically."""
        if self._n == 0:
            return
        path = self.dir / f"chunk-{self._next_chunk:08d}.npy"
        with atomic_write(path, "wb") as f:
            np.save(f, self._buf[:self._n], allow_pickle=False)
        self._next_chunk += 1
        self._n = 0

    def close(self) -> None:
        """Flush at the end of training."""
        self.flush()

    def state_dict(self) -> dict:
        """Flush, then `{"next_step": S}`: all rows with step < S are committed to disk."""
        self.flush()
        return {"next_step": int(self._next_step)}

    def load_state_dict(self, d: dict) -> None:
        """Resume at `d["next_step"]`: remove this rank's rows with step >= it, drop the buffer."""
        try:
            next_step = int(d["next_step"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"ledger state: expected {{'next_step': int}}, got {d!r}") from None
        self._n = 0
        _drop_rows_from(self.dir, next_step)
        chunks = _chunks(self.dir)
        self._next_chunk = chunks[-1][0] + 1 if chunks else 0
        self._next_step = next_step

    def drop_orphans(self, world: int) -> None:
        """After resuming on fewer ranks (call on rank 0, after load_state_dict): the directories
        of ranks >= `world`, which no rank writes now, lose their rows with step >= next_step
        too (the interrupted run's, written after the checkpoint)."""
        for rank_dir in self.dir.parent.iterdir():
            m = _RANK.fullmatch(rank_dir.name)
            if m and int(m.group(1)) >= world:
                _drop_rows_from(rank_dir, self._next_step)


def _drop_rows_from(rank_dir: Path, next_step: int) -> None:
    """Remove the rows with step >= next_step from one rank directory's chunks."""
    for _, path in _chunks(rank_dir):
        rows = _load_chunk(path)
        keep = rows["step"] < next_step
        if keep.all():
            continue
        if keep.any():
            with atomic_write(path, "wb") as f:
                np.save(f, rows[keep], allow_pickle=False)
        else:
            path.unlink()


def read_ledger(run_dir: str | Path) -> np.ndarray:
    """All ranks' committed rows of a run as one structured array (fields of `ROW` plus `rank`),
    sorted by (step, seq_id, segment). Raises UserError if the ledger is missing, unreadable, or
    holds a (step, seq_id, segment) twice (a run restarted in a used directory without
    resuming)."""
    root = Path(run_dir) / "ledger"
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not root.is_dir():
        raise UserError(f"{root}: no ledger in this run directory (was it trained by lai-train?)")
    parts = []
    for rank_dir in sorted(root.iterdir()):
        m = _RANK.fullmatch(rank_dir.name)
        if not m:
            continue
        rank = int(m.group(1))
        for _, path in _chunks(rank_dir):
            rows = _load_chunk(path)
            out = np.empty(rows.size, ROW.descr + [("rank", "<i4")])
            for name in ROW.names or ():
                out[name] = rows[name]
            out["rank"] = rank
            parts.append(out)
    rows = np.concatenate(parts) if parts else np.empty(0, ROW.descr + [("rank", "<i4")])
    rows = rows[np.lexsort((rows["segment"], rows["seq_id"], rows["step"]))]
    dup = (np.diff(rows["step"]) == 0) & (np.diff(rows["seq_id"]) == 0) \
        & (np.diff(rows["segment"]) == 0)
    if dup.any():
        i = int(np.argmax(dup))
        raise UserError(f"{root}: {int(dup.sum())} duplicate rows, first at step "
                        f"{rows['step'][i]} seq_id {rows['seq_id'][i]} (a run restarted in a "
                        f"used run directory without resuming?)")
    return rows

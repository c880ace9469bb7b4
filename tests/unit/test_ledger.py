"""Valuation ledger: byte-level round trip, resume == uninterrupted (atomic chunks under SIGKILL:
e2e/test_ledger_kill.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.format.ledger import ROW, Ledger, read_ledger

MICRO, WORLD = 3, 2


def batch(step: int, rank: int):
    """The (deterministic) ledger rows rank `rank` appends at `step`: seq_ids follow the loader's
    global micro-batch layout, values/losses are made up but distinct."""
    g = np.random.default_rng(1000 * step + rank)
    seq = np.arange(MICRO) + (step * WORLD + rank) * MICRO
    values = g.normal(size=MICRO)
    return seq, values, values > 0, g.uniform(1, 5, size=MICRO).astype(np.float32)


def train(run: Path, ledgers: list[Ledger], steps: range, ckpt_every: int = 0) -> dict | None:
    """Append `steps` on every rank; returns the state of the last checkpoint taken (rank 0's)."""
    state = None
    for step in steps:
        for rank, led in enumerate(ledgers):
            seq, v, k, loss = batch(step, rank)
            # mix input kinds: tensors on rank 0, numpy on rank 1
            if rank == 0:
                led.append(step, torch.from_numpy(seq), torch.from_numpy(v), torch.from_numpy(k),
                           torch.from_numpy(loss), torch.from_numpy(2 * v))
            else:
                led.append(step, seq, v, k, loss, 2 * v)
        if ckpt_every and (step + 1) % ckpt_every == 0:
            states = [led.state_dict() for led in ledgers]
            assert all(s == states[0] for s in states)
            state = states[0]
    return state


def expected(steps: range) -> np.ndarray:
    rows = []
    for step in steps:
        for rank in range(WORLD):
            seq, v, k, loss = batch(step, rank)
            for i in range(MICRO):
                rows.append((step, seq[i], v[i], loss[i], k[i], 2 * v[i], float(k[i]), -1, rank))
    out = np.array(rows, ROW.descr + [("rank", "<i4")])
    return out[np.lexsort((out["seq_id"], out["step"]))]


def test_round_trip_chunks_and_merge(tmp_path):
    ledgers = [Ledger(tmp_path, r, chunk_rows=4) for r in range(WORLD)]
    train(tmp_path, ledgers, range(5))          # 15 rows per rank: 3 full chunks + 3 buffered
    assert len(list((tmp_path / "ledger/rank-00000").glob("chunk-*.npy"))) == 3
    assert read_ledger(tmp_path).size == 2 * 12  # buffered rows are not committed yet
    for led in ledgers:
        led.close()
    names = sorted(p.name for p in (tmp_path / "ledger/rank-00001").iterdir())
    assert names == [f"chunk-{i:08d}.npy" for i in range(4)]
    got = read_ledger(tmp_path)
    want = expected(range(5))
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()      # byte-exact, merged and sorted by (step, seq_id)

    # truncating inside a chunk rewrites it (step 3 = rows 10..11 of chunk 2 on each rank)
    for led in ledgers:
        led.load_state_dict({"next_step": 3})
    assert read_ledger(tmp_path).tobytes() == expected(range(3)).tobytes()
    assert len(list((tmp_path / "ledger/rank-00000").glob("chunk-*.npy"))) == 3


def test_resume_equals_uninterrupted(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ledgers = [Ledger(straight, r, chunk_rows=5) for r in range(WORLD)]
    train(straight, ledgers, range(12))
    for led in ledgers:
        led.close()

    # interrupted run: checkpoints every 4 steps, killed after step 9 (rows of steps 8 and 9 were
    # partly flushed by full chunks, partly still buffered and lost)
    ledgers = [Ledger(resumed, r, chunk_rows=5) for r in range(WORLD)]
    state = train(resumed, ledgers, range(10), ckpt_every=4)
    assert state == {"next_step": 8}
    assert read_ledger(resumed)["step"].max() == 9   # the crash left rows past the checkpoint
    del ledgers

    # resume from the checkpoint at step 8: every rank loads rank 0's state
    ledgers = [Ledger(resumed, r, chunk_rows=5) for r in range(WORLD)]
    for led in ledgers:
        led.load_state_dict(state)
    assert read_ledger(resumed)["step"].max() == 7
    train(resumed, ledgers, range(8, 12))
    for led in ledgers:
        led.close()
    assert read_ledger(resumed).tobytes() == read_ledger(straight).tobytes()
    assert read_ledger(resumed).tobytes() == expected(range(12)).tobytes()

    # fresh start in a used directory: state {"next_step": 0} empties the rank's ledger
    led = Ledger(resumed, 0)
    led.load_state_dict({"next_step": 0})
    assert not list((resumed / "ledger/rank-00000").iterdir())


def test_restart_without_resume_is_detected(tmp_path):
    led = Ledger(tmp_path, 0)
    led.append(0, [0, 1], [0.5, -0.5], [True, False], [1.0, 2.0])
    led.close()
    led = Ledger(tmp_path, 0)                   # a second run, same dir, no load_state_dict
    led.append(0, [0, 1], [0.5, -0.5], [True, False], [1.0, 2.0])
    led.close()
    with pytest.raises(UserError, match="duplicate rows, first at step 0 seq_id 0"):
        read_ledger(tmp_path)


def test_errors(tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        read_ledger(tmp_path / "nope")
    with pytest.raises(UserError, match="no ledger"):
        read_ledger(tmp_path)
    led = Ledger(tmp_path, 0)
    with pytest.raises(ValueError, match="lengths differ"):
        led.append(0, [1, 2], [0.1], [True], [1.0])
    bad = tmp_path / "ledger/rank-00000/chunk-00000000.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="chunk-00000000.npy: not a readable ledger chunk"):
        read_ledger(tmp_path)
    np.save(bad, np.zeros(3))
    with pytest.raises(UserError, match="expected 1-D"):
        read_ledger(tmp_path)
    with pytest.raises(UserError, match="ledger state"):
        led.load_state_dict({"rows": 3})


def test_segment_column_and_chunks_written_before_it(tmp_path):
    """lai.unit=document rows carry their document run; a chunk written before the segment
    column reads as whole sequences (-1), and (step, seq_id, segment) is the row's key."""
    from pipeline.format.ledger import ROW_V3
    led = Ledger(tmp_path, 0)
    led.append(1, [7, 7, 8], [0.1, 0.2, 0.3], [True, False, True], [1.0, 2.0, 3.0],
               segments=[0, 2, -1])
    led.close()
    old = np.zeros(2, ROW_V3)
    old["step"], old["seq_id"], old["kept"] = 2, [3, 4], True
    np.save(tmp_path / "ledger" / "rank-00000" / "chunk-00000099.npy", old)
    rows = read_ledger(tmp_path)
    assert rows["segment"].tolist() == [0, 2, -1, -1, -1]
    assert rows["kept"].tolist() == [True, False, True, True, True]

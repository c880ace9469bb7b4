"""Reading a trainer run's TensorBoard scalars: events, curves, step phases, wall tokens/s."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tb_events(tb_dir: Path, tag: str) -> list[tuple[int, float, float]]:
    """(step, wall time, value) of every event of scalar `tag` in one TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]


STEP_PARTS = ("time_data_s", "time_forward_s", "time_lai_s", "time_backward_step_s")


def step_parts(tb_dir: Path) -> dict[str, float]:
    """Each phase of a step (STEP_PARTS): the median over the logging windows after the first of
    the slowest rank's time (perf_ranks/<part>_max, written by rank 0 for all ranks)."""
    return {tag: float(np.median([v for _, _, v in tb_events(tb_dir, f"perf_ranks/{tag}_max")][1:]))
            for tag in STEP_PARTS}


def tb_scalars(tb_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of scalar `tag` in one TensorBoard folder (empty arrays if absent)."""
    ev = tb_events(tb_dir, tag)
    return np.array([s for s, _, _ in ev]), np.array([v for _, _, v in ev])


def wall_tokens_per_s(run_dir: Path, tokens_per_step: int) -> float:
    """Tokens per second of a trainer run by the wall clock between its second and its last
    train/loss log line: everything the loop does (logging, ledger, timers), start-up excluded."""
    loss = tb_events(run_dir / "tb", "train/loss")
    if len(loss) < 2:
        return float("nan")
    (s0, w0, _), (s1, w1, _) = loss[1] if len(loss) > 2 else loss[0], loss[-1]
    return (s1 - s0) * tokens_per_step / (w1 - w0) if w1 > w0 else float("nan")

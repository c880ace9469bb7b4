"""Deterministic weighted blending: which source serves each global sample.

Over a period of P global positions source s gets an integer quota m_s (largest-remainder rounding
of w_s * P, at least 1), and its m_s slots are spread evenly: the k-th one sits at "ideal time"
(k + 1/2) / m_s, and positions are the slots sorted by that time (ties: lower source index first).
Within every window of any length, each source's count is within about one sample of
w_s * length, and since every period ends with all quotas met, the schedule repeats seamlessly.
Lookup is O(1): global sample i -> (source, k), k counting that source's samples from the start.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERIOD = 1 << 16   # blending resolution: weights are honoured to within 1 / PERIOD


@dataclass(frozen=True)
class BlendSchedule:
    source: np.ndarray   # int32 [period]: source of each position in the period
    rank: np.ndarray     # int64 [period]: how many earlier positions of the period that source has
    quota: np.ndarray    # int64 [num_sources]: positions per period of each source

    @property
    def period(self) -> int:
        return len(self.source)

    def assign(self, i: int) -> tuple[int, int]:
        """Global sample i -> (source index, k): it is the k-th sample drawn from that source."""
        block, r = divmod(i, self.period)
        s = int(self.source[r])
        return s, block * int(self.quota[s]) + int(self.rank[r])


def quotas(weights: np.ndarray, period: int) -> np.ndarray:
    """Largest-remainder integer split of `period` in proportion to `weights`, each at least 1."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) > period:
        raise ValueError(f"{len(w)} sources do not fit a blending period of {period}")
    exact = w / w.sum() * period
    q = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - q), kind="stable")
    q[order[: period - int(q.sum())]] += 1
    for s in np.flatnonzero(q == 0):       # a tiny weight still gets its source sampled
        q[s] = 1
        q[int(np.argmax(q))] -= 1
    return q


def spread(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions for integer per-source counts (zeros allowed), each source's slots spread evenly:
    (source int32 [sum], rank int64 [sum]: how many earlier positions that source has). The k-th
    slot of source s sits at ideal time (k + 1/2) / counts[s]; ties go to the lower source index."""
    q = np.asarray(counts, dtype=np.int64)
    src = np.repeat(np.arange(len(q), dtype=np.int32), q)
    rank = np.concatenate([np.arange(m, dtype=np.int64) for m in q]) if len(q) else src.astype(np.int64)
    ideal = (rank + 0.5) / q[src]
    order = np.lexsort((src, ideal))     # by ideal time, ties by source index
    return src[order], rank[order]


def blend_schedule(weights, period: int = PERIOD) -> BlendSchedule:
    """The blending schedule for mixing weights (positive, any scale)."""
    q = quotas(np.asarray(weights, dtype=np.float64), period)
    src, rank = spread(q)
    return BlendSchedule(source=src, rank=rank, quota=q)

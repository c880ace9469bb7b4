"""Dynamic mixing: which source serves each slot of a global micro-batch when the sources' weights
change between batches (lai.mixing sets them; the loader only follows).

Global micro-batch b of G samples, with the weights p current at b (normalised): source s is owed
credit_s + G * p_s slots. It gets the integer part (none if negative); the slots still missing go
one at a time to the largest remainders (surplus slots are taken back from the smallest ones among
the sources that got one), ties to the lower source index; what was owed and not given is carried
to the next batch as credit_s (|credit_s| < 1 up to rounding). So over any run of batches each
source's count is within about one sample of the sum of G * p_s over those batches, whatever the
weights did. Inside the batch the slots are spread evenly (blend.spread), and a source's samples
are drawn in order: its j-th slot of the batch is its sample drawn_s + j.

State (restored on resume): the current weights, credit [S] and drawn [S]; none of it depends on
G or on the number of ranks, and everything is computed in float64 in one fixed order, so every
rank, and a resumed run, allocates the same slots.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.data.blend import spread


def _weights(weights, n: int | None = None) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if n is not None and w.size != n:
        raise ValueError(f"mixing weights: expected {n} values (one per source), got {w.size}")
    if w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"mixing weights: need finite values >= 0 with a positive sum, got "
                         f"{w.tolist()}")
    return w / w.sum()


class DynamicMixture:
    """The sources of each global micro-batch from the current weights (see the module doc)."""

    def __init__(self, weights):
        self.weights = _weights(weights)                  # float64 [S], sums to 1
        self.credit = np.zeros(self.weights.size)         # float64 [S]
        self.drawn = np.zeros(self.weights.size, dtype=np.int64)   # samples drawn per source

    @property
    def num_sources(self) -> int:
        return self.weights.size

    def set_weights(self, weights) -> None:
        """Weights (>= 0, positive sum, any scale) for the batches from the next one on."""
        self.weights = _weights(weights, self.num_sources)

    def counts(self, size: int) -> np.ndarray:
        """int64 [S]: the slots each source gets in the next batch of `size` (no state change)."""
        want = self.credit + size * self.weights
        n = np.maximum(np.floor(want), 0.0).astype(np.int64)
        frac = want - n
        for _ in range(abs(size - int(n.sum()))):
            if n.sum() < size:
                s = int(np.argmax(frac))                            # first = lowest index on ties
            else:
                s = int(np.argmin(np.where(n > 0, frac, math.inf)))
            step = 1 if n.sum() < size else -1
            n[s] += step
            frac[s] -= step
        return n

    def next_batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(source int32 [size], k int64 [size]) of the next global micro-batch: slot i is sample
        k[i] of source source[i]. Advances the state."""
        n = self.counts(size)
        self.credit = self.credit + size * self.weights - n
        src, rank = spread(n)
        k = self.drawn[src] + rank
        self.drawn = self.drawn + n
        return src, k

    def state_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "credit": self.credit.tolist(),
                "drawn": self.drawn.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.weights = _weights(d["weights"], self.num_sources)
        self.credit = np.asarray(d["credit"], dtype=np.float64)
        self.drawn = np.asarray(d["drawn"], dtype=np.int64)

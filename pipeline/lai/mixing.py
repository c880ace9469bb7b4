"""Source-level valuation driving the data mix (lai.mixing): the training sources' sampling weights
follow an exponentiated-gradient (EG) update on each source's running mean of normalised value,
in the spirit of DoGE and online data mixing. One sequence's value is noisy; a source's mean over
many sequences is not.

Every `every` optimizer steps after lai.warmup_steps (an update), with x_s the mean value_norm
(the z-score of each sequence's LAI value in its global micro-batch) of source s's sequences
since the previous update, over all ranks:

    m_s     <- ema * m_s + (1 - ema) * x_s       (m_s = 0 at the start; a source with no scored
                                                  sequence in the window keeps its m_s)
    log q_s <- log q_s + eta * m_s               (q = softmax(log q): the EG weights, q = w0 first)
    p_s      = (1 - floor) * q_s + floor * w0_s  (the sampling weights; w0 = the initial weights)

so every source keeps at least `floor` of its initial share, and a source whose sequences are
valued above the batch average gains share at a rate set by eta. The loader draws the next
global micro-batches with p (pipeline.data.mixture).

Deterministic: every rank gathers the global micro-batch's (source, value_norm) pairs in rank
order and sums them in that order, so all ranks (and one process given the concatenated batch,
and a run resumed with another world size) compute bit-identical weights. State (a global
checkpoint member): m, log q, the window's sums, and the trajectory (step, p) of every update.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.comm import Comm
from pipeline.errors import UserError


class SourceMixer:
    """EG mixing weights of `initial` weighted sources (see the module doc). Collective: every rank
    calls `observe` and `end_step` together."""

    def __init__(self, initial, *, eta: float, ema: float, floor: float, every: int,
                 warmup_steps: int = 0, comm: Comm | None = None):
        w0 = np.asarray(initial, dtype=np.float64)
        self.w0 = w0 / w0.sum()
        self.eta, self.ema, self.floor, self.every = eta, ema, floor, every
        self.warmup_steps = warmup_steps
        self.comm = comm or Comm.resolve()
        n = self.w0.size
        self.log_q = np.log(self.w0)
        self.m = np.zeros(n)
        self.sums, self.counts = np.zeros(n), np.zeros(n)     # the window since the last update
        self.history: list[list[float]] = [[0, *self.weights.tolist()]]   # [step, *p]

    @classmethod
    def from_settings(cls, s, initial, comm: Comm | None = None) -> SourceMixer:
        """From LAISettings `s` (lai.mixing_*, lai.warmup_steps)."""
        return cls(initial, eta=s.mixing_eta, ema=s.mixing_ema, floor=s.mixing_floor,
                   every=s.mixing_every, warmup_steps=s.warmup_steps, comm=comm)

    @property
    def q(self) -> np.ndarray:
        """float64 [S]: the EG weights, softmax(log q)."""
        e = np.exp(self.log_q - self.log_q.max())
        return e / e.sum()

    @property
    def weights(self) -> np.ndarray:
        """float64 [S]: the sampling weights p (sum 1)."""
        return (1.0 - self.floor) * self.q + self.floor * self.w0

    def active(self, step: int) -> bool:
        return step > self.warmup_steps

    def observe(self, step: int, sources: torch.Tensor, value_norm: torch.Tensor) -> None:
        """Add this rank's sequences of one micro-step of optimizer step `step` (1-based):
        `sources` int [B] (source indices), `value_norm` float [B] (NaN = not scored).
        Collective (one gather), also during the warmup (which ignores the values)."""
        local = torch.stack([sources.detach().to("cpu", torch.float64),
                             value_norm.detach().to("cpu", torch.float64)], dim=1)
        both = torch.cat(self.comm.gather(local)).numpy()
        if not self.active(step):
            return
        src, v = both[:, 0].astype(np.int64), both[:, 1]
        ok = np.isfinite(v)
        n = self.w0.size
        self.sums += np.bincount(src[ok], weights=v[ok], minlength=n)
        self.counts += np.bincount(src[ok], minlength=n)

    def end_step(self, step: int) -> np.ndarray | None:
        """After optimizer step `step`: the new sampling weights if an update was due, else None."""
        if not self.active(step) or (step - self.warmup_steps) % self.every:
            return None
        seen = self.counts > 0
        x = np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=seen)
        self.m = np.where(seen, self.ema * self.m + (1.0 - self.ema) * x, self.m)
        self.log_q = self.log_q + self.eta * self.m
        self.log_q -= self.log_q.max()                 # softmax-invariant; keeps it bounded above
        self.sums, self.counts = np.zeros_like(self.sums), np.zeros_like(self.counts)
        p = self.weights
        self.history.append([step, *p.tolist()])
        return p

    def trajectory(self, names: list[str]) -> dict:
        """The mixture as RUN/mixing.json holds it: source names, initial and current sampling
        weights, and the step and weights of every update (step 0 = the initial weights)."""
        h = np.asarray(self.history, dtype=np.float64)
        return {"sources": list(names), "initial": self.w0.tolist(),
                "final": self.weights.tolist(), "steps": h[:, 0].astype(np.int64).tolist(),
                "weights": h[:, 1:].tolist()}

    def state_dict(self) -> dict:
        return {"w0": self.w0.tolist(), "log_q": self.log_q.tolist(), "m": self.m.tolist(),
                "sums": self.sums.tolist(), "counts": self.counts.tolist(),
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, d: dict) -> None:
        """Restore; the sources (count and initial weights) must be the ones it was saved with."""
        if not np.array_equal(np.asarray(d["w0"]), self.w0):
            raise UserError(f"mixing state: saved for initial weights {d['w0']}, this run has "
                             f"{self.w0.tolist()}")
        self.log_q, self.m = np.asarray(d["log_q"]), np.asarray(d["m"])
        self.sums, self.counts = np.asarray(d["sums"]), np.asarray(d["counts"])
        self.history = [list(h) for h in d["history"]]

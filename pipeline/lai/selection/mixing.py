"""Source mixing (lai.mixing): the training sources' sampling weights follow an online rule fed
with what each source's sequences showed since the last update. One mixer, two rewards
(lai.mixing.kind):

- `value`: exponentiated gradient (EG) on each source's running mean normalised LAI value (the
  z-score of each sequence's value in its global micro-batch), in the spirit of DoGE;
- `loss_bandit`: EXP3 on each source's training loss, as Online Data Mixing (Albalak et al.
  2023); it needs no LAI value (works with lai.enabled=false).

Every `every` optimizer steps after `warmup_steps` (update u = 1, 2, ...), with x_s the mean over
all ranks of source s's reward since the previous update (value: value_norm; loss_bandit: the
per-sequence mean training loss) and p_s the weight that window was drawn with, K sources:

    value:        m_s <- ema m_s + (1 - ema) x_s        log q_s <- log q_s + eta m_s   f_u = floor
    loss_bandit:  m_s <- ema m_s + (1 - ema) x_s / p_s  log q_s  = log w0_s + e_{u-1} m_s
                  e_u = min(1/K, sqrt(ln K / (K u)))    (e_0 = 1/K)    f_u = max(floor, K e_u)

(m_s = 0 at the start; a source with no finite reward in the window keeps its m_s; x_s / p_s is
ODM's importance-weighted reward; with equal initial weights the bandit's p is ODM's policy
(1 - K e_u) softmax(e_{u-1} m) + e_u), then

    p_now = (1 - f_u) softmax(log q) + f_u w0   (w0: the initial weights; every source keeps at
                                                 least f_u of its initial share)
    p_avg = mean of p_now over w0 and the updates so far   (DoGE's time-average)

and the loader draws the next global micro-batches with p_avg (`average`, lai.mixing.average) or
p_now (pipeline.data.mixture). The time-average is what keeps a mixer from swinging from floor to
floor when the reward follows the mix (a val set drawn from the mix: the under-trained source
aligns best, takes the mass, is over-trained, loses it): p_now may oscillate, p_avg moves by
O(1/u) per update.

Deterministic: every rank gathers the global micro-batch's (source, value_norm, loss) rows in
rank order and sums them in that order, so all ranks (and one process given the concatenated
batch, and a run resumed with another world size) compute bit-identical weights. State (a global
checkpoint member): m, log q, p_avg, the window's sums, per-source counts and the trajectory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.comm import Comm
from pipeline.errors import UserError, need, need_one_of

MIXERS = ("value", "loss_bandit")


@dataclass
class MixingSettings:
    """lai.mixing: the training sources' sampling weights follow an online rule (read by
    SourceMixer; kind and groups also by the data loader); needs 2+ data.sources."""
    kind: str = "none"                 # none | value (EG on each source's mean normalised LAI
                                       # value; needs lai.enabled) | loss_bandit (EXP3 on each
                                       # source's training loss, as Online Data Mixing; needs no
                                       # LAI value)
    eta: float = 0.1                   # kind=value: EG step size: log-weight change per update
                                       # per unit of the source's running mean z-score
    ema: float = 0.9                   # smoothing of each source's reward, in [0, 1)
    average: bool = False              # true: sample with the time-average of the weights over
                                       # the updates (DoGE) instead of the latest (which can swing
                                       # floor to floor when the val set is the mix); the
                                       # time-average is logged either way
    floor: float = 0.1                 # share of the initial weights always kept, in [0, 1]
    every: int = 1                     # update the weights every N optimizer steps
    groups: bool = False               # the arms are the (source, group) pairs of data prepared
                                       # with lai-prep --groups K (pipeline.data.groups)
    without_val: bool = False          # kind=value with a global or local reference (the
                                       # training batch itself: self-influence, no goal) is
                                       # refused unless this is true

    def check(self) -> None:
        """ValueError `lai.mixing.<field>: ...` naming the first bad field."""
        need_one_of(self.kind, "lai.mixing.kind", ("none", *MIXERS))
        need(math.isfinite(self.eta) and self.eta >= 0, "lai.mixing.eta",
             f"must be a finite number >= 0, got {self.eta}")
        need(0 <= self.ema < 1, "lai.mixing.ema", f"must be in [0, 1), got {self.ema}")
        need(0 <= self.floor <= 1, "lai.mixing.floor", f"must be in [0, 1], got {self.floor}")
        need(self.every >= 1, "lai.mixing.every", f"must be >= 1, got {self.every}")
        need(not self.groups or self.kind != "none", "lai.mixing.groups",
             "needs lai.mixing.kind=value or loss_bandit")

    @property
    def on(self) -> bool:
        return self.kind != "none"


def exploration(u: int, k: int) -> float:
    """EXP3's exploration rate e_u = min(1/K, sqrt(ln K / (K u))) (e_0 = 1/K)."""
    return 1.0 / k if u == 0 else min(1.0 / k, math.sqrt(math.log(k) / (k * u)))


class ValueEG:
    """lai.mixing.kind=value: EG on the running mean normalised LAI value (see the module
    doc)."""
    reward = 1            # column of the gathered rows: 1 value_norm, 2 loss

    def __init__(self, s: MixingSettings):
        self.s = s

    def signal(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return x

    def log_q(self, log_q: np.ndarray, m: np.ndarray, w0: np.ndarray, u: int) -> np.ndarray:
        return log_q + self.s.eta * m

    def share(self, floor: float, u: int, k: int) -> float:
        return floor


class LossBandit:
    """lai.mixing.kind=loss_bandit: EXP3 on the training loss, as ODM (see the module doc)."""
    reward = 2

    def signal(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return x / p

    def log_q(self, log_q: np.ndarray, m: np.ndarray, w0: np.ndarray, u: int) -> np.ndarray:
        return np.log(w0) + exploration(u - 1, w0.size) * m

    def share(self, floor: float, u: int, k: int) -> float:
        return max(floor, k * exploration(u, k))


def make_rule(s: MixingSettings):
    need_one_of(s.kind, "lai.mixing.kind", MIXERS)
    return ValueEG(s) if s.kind == "value" else LossBandit()


class SourceMixer:
    """Sampling weights of `initial` weighted sources (see the module doc). Collective: every
    rank calls `observe` and `end_step` together."""

    def __init__(self, initial, s: MixingSettings, warmup_steps: int = 0,
                 comm: Comm | None = None):
        """`s`: checked MixingSettings of kind value or loss_bandit; `warmup_steps`: no update
        up to this step (lai.warmup_steps)."""
        w0 = np.asarray(initial, dtype=np.float64)
        self.w0 = w0 / w0.sum()
        s.check()
        self.s, self.rule = s, make_rule(s)
        self.warmup_steps = warmup_steps
        self.comm = comm or Comm.resolve()
        n = self.w0.size
        self.log_q, self.m, self.updates = np.log(self.w0), np.zeros(n), 0
        self.now, self.avg = self.w0.copy(), self.w0.copy()
        self.sums, self.counts = np.zeros((2, n)), np.zeros((2, n))   # window: value, loss
        self.last = np.full((2, n), np.nan)       # the last window's mean value_norm and loss
        self.sequences = np.zeros(n)              # every sequence drawn, warmup included
        self.history: list[list[float]] = [[0, *self.weights.tolist()]]   # [step, *p]
        self.history_now: list[list[float]] = [self.now.tolist()]

    @property
    def q(self) -> np.ndarray:
        """float64 [S]: softmax(log q)."""
        e = np.exp(self.log_q - self.log_q.max())
        return e / e.sum()

    @property
    def weights(self) -> np.ndarray:
        """float64 [S]: the sampling weights (p_avg with `average`, else p_now; sum 1)."""
        return self.avg if self.s.average else self.now

    def active(self, step: int) -> bool:
        return step > self.warmup_steps

    def observe(self, step: int, sources: torch.Tensor, value_norm: torch.Tensor,
                losses: torch.Tensor) -> None:
        """Add this rank's sequences of one micro-step of optimizer step `step` (1-based):
        `sources` int [B] (source indices), `value_norm` float [B] (NaN = not scored), `losses`
        float [B] (per-sequence mean training loss). Collective (one gather), also during the
        warmup (which ignores the rewards)."""
        local = torch.stack([t.detach().to("cpu", torch.float64)
                             for t in (sources, value_norm, losses)], dim=1)
        rows = torch.cat(self.comm.gather(local)).numpy()
        n = self.w0.size
        src = rows[:, 0].astype(np.int64)
        self.sequences += np.bincount(src, minlength=n)
        if not self.active(step):
            return
        for i in range(2):
            ok = np.isfinite(rows[:, 1 + i])
            self.sums[i] += np.bincount(src[ok], weights=rows[ok, 1 + i], minlength=n)
            self.counts[i] += np.bincount(src[ok], minlength=n)

    def end_step(self, step: int) -> np.ndarray | None:
        """After optimizer step `step`: the new sampling weights if an update was due, else None."""
        if not self.active(step) or (step - self.warmup_steps) % self.s.every:
            return None
        seen = self.counts > 0
        self.last = np.where(seen, self.sums / np.where(seen, self.counts, 1.0), np.nan)
        i = self.rule.reward - 1
        x = self.rule.signal(np.nan_to_num(self.last[i]), self.weights)
        self.m = np.where(seen[i], self.s.ema * self.m + (1.0 - self.s.ema) * x, self.m)
        self.updates += 1
        u = self.updates
        self.log_q = self.rule.log_q(self.log_q, self.m, self.w0, u)
        self.log_q -= self.log_q.max()                 # softmax-invariant; keeps it bounded above
        f = self.rule.share(self.s.floor, u, self.w0.size)
        self.now = (1.0 - f) * self.q + f * self.w0
        self.avg = self.avg + (self.now - self.avg) / (u + 1)
        self.sums, self.counts = np.zeros_like(self.sums), np.zeros_like(self.counts)
        p = self.weights
        self.history.append([step, *p.tolist()])
        self.history_now.append(self.now.tolist())
        return p

    def arms(self) -> dict[str, np.ndarray]:
        """Per source, for the logs: `weight` (sampling), `weight_now` (p_now), `weight_avg`
        (p_avg), `reward` (m), the last window's mean `value` (value_norm) and `loss`, and
        `sequences` drawn so far."""
        return {"weight": self.weights, "weight_now": self.now, "weight_avg": self.avg,
                "reward": self.m,
                "value": self.last[0], "loss": self.last[1], "sequences": self.sequences}

    def trajectory(self, names: list[str]) -> dict:
        """The mixture as RUN/mixing.json holds it: source names, the mixer, initial and current
        sampling weights, the step and sampling weights of every update (step 0 = the initial
        weights), p_now at each (`weights_now`), and the sequences drawn from each source."""
        h = np.asarray(self.history, dtype=np.float64)
        return {"sources": list(names), "mixer": type(self.rule).__name__,
                "average": self.s.average, "initial": self.w0.tolist(),
                "final": self.weights.tolist(), "steps": h[:, 0].astype(np.int64).tolist(),
                "weights": h[:, 1:].tolist(), "weights_now": [list(r) for r in self.history_now],
                "sequences": self.sequences.astype(np.int64).tolist()}

    def state_dict(self) -> dict:
        return {"w0": self.w0.tolist(), "log_q": self.log_q.tolist(), "m": self.m.tolist(),
                "updates": self.updates, "now": self.now.tolist(), "avg": self.avg.tolist(),
                "sums": self.sums.tolist(), "counts": self.counts.tolist(),
                "last": self.last.tolist(), "sequences": self.sequences.tolist(),
                "history": [list(h) for h in self.history],
                "history_now": [list(h) for h in self.history_now]}

    def load_state_dict(self, d: dict) -> None:
        """Restore; the sources (count and initial weights) must be the ones it was saved with."""
        if not np.array_equal(np.asarray(d["w0"]), self.w0):
            raise UserError(f"mixing state: saved for initial weights {d['w0']}, this run has "
                            f"{self.w0.tolist()}")
        for k in ("log_q", "m", "now", "avg", "sums", "counts", "last", "sequences"):
            setattr(self, k, np.asarray(d[k], dtype=np.float64))
        self.updates = int(d["updates"])
        self.history = [list(h) for h in d["history"]]
        self.history_now = [list(h) for h in d["history_now"]]

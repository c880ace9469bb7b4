"""Soft reweighting (lai.weighting): a bounded loss weight per sequence from its normalised value,
instead of dropping it.

    w_j = min + (max - min) * sigmoid(z_j / temperature)      (lai.weighting.kind=sigmoid)

z_j: the sequence's value_norm (the z-score of its LAI value in the global micro-batch); a
non-finite z (its step is skipped anyway) gets the midpoint. The weights are relative: the
trainer's loss normalises by the weighted kept tokens (pipeline.train.step.masked_loss), so
the effective weight of sequence j's tokens against an unweighted token is w_j K / W (K kept
tokens, W = sum of w_j n_j over them): its mean over the trained tokens is exactly 1 (the
effective learning rate does not drift), and it lies in [min / max, max / min].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.errors import need, need_one_of

WEIGHTINGS = ("none", "sigmoid")


@dataclass
class WeightingSettings:
    """lai.weighting: bounded per-sequence loss weights from value_norm, inside the kept-token
    normalisation (read by sequence_weights); nothing dropped by it."""
    kind: str = "none"                 # none | sigmoid
    temperature: float = 1.0           # sigmoid: z-score scale of the sigmoid
    min: float = 0.5                   # sigmoid: raw weight bounds, 0 < min < max (effective
    max: float = 2.0                   # weights: in [min/max, max/min], mean 1)

    def check(self) -> None:
        """ValueError `lai.weighting.<field>: ...` naming the first bad field."""
        need_one_of(self.kind, "lai.weighting.kind", WEIGHTINGS)
        need(math.isfinite(self.temperature) and self.temperature > 0,
             "lai.weighting.temperature", f"must be a finite number > 0, got {self.temperature}")
        need(math.isfinite(self.max) and 0 < self.min < self.max, "lai.weighting.min",
             f"need 0 < lai.weighting.min < lai.weighting.max (finite), got {self.min} and "
             f"{self.max}")


def sequence_weights(value_norm: torch.Tensor, s: WeightingSettings) -> torch.Tensor | None:
    """float64 [B] raw weights in [s.min, s.max] from `value_norm` [B], or None for
    kind=none."""
    if s.kind == "none":
        return None
    z = torch.nan_to_num(value_norm.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return s.min + (s.max - s.min) * torch.sigmoid(z / s.temperature)

"""Soft reweighting (lai.weighting): a bounded loss weight per sequence from its normalised value,
instead of dropping it.

    w_j = w_min + (w_max - w_min) * sigmoid(z_j / temperature)      (lai.weighting=sigmoid)

z_j: the sequence's value_norm (the z-score of its LAI value in the global micro-batch); a
non-finite z (its step is skipped anyway) gets the midpoint. The weights are relative: the
trainer's loss normalises by the weighted kept tokens (pipeline.train.step.masked_loss), so
the effective weight of sequence j's tokens against an unweighted token is w_j K / W (K kept
tokens, W = sum of w_j n_j over them): its mean over the trained tokens is exactly 1 (the
effective learning rate does not drift), and it lies in [w_min / w_max, w_max / w_min].
"""
from __future__ import annotations

import torch

WEIGHTINGS = ("none", "sigmoid")


def sequence_weights(value_norm: torch.Tensor, s) -> torch.Tensor | None:
    """float64 [B] raw weights in [w_min, w_max] from `value_norm` [B], or None for
    lai.weighting=none. `s`: LAISettings."""
    if s.weighting == "none":
        return None
    z = torch.nan_to_num(value_norm.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return s.weight_min + (s.weight_max - s.weight_min) * torch.sigmoid(z / s.weight_temperature)

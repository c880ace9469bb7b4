"""Test-only fault injection: never set this in a real run.

    LAI_TEST_NONFINITE_LOSS=STEP[,STEP...]   in every micro-step of these optimizer steps, rank 0's
                                             first sequence gets a NaN loss

Read once when the trainer starts (`nonfinite_loss_steps`), so that the tests drive the real
trainer down its non-finite path (every rank skips the update, train/loss logs NaN,
train/skipped_steps counts it, train.max_nonfinite_steps in a row abort the run) without
diverging a model on purpose.
"""
from __future__ import annotations

import os

import torch

from pipeline.errors import UserError

NONFINITE_LOSS_ENV = "LAI_TEST_NONFINITE_LOSS"


def nonfinite_loss_steps() -> frozenset[int]:
    """The steps listed in $LAI_TEST_NONFINITE_LOSS (empty when it is unset)."""
    raw = os.environ.get(NONFINITE_LOSS_ENV, "").strip()
    try:
        return frozenset(int(s) for s in raw.split(",")) if raw else frozenset()
    except ValueError:
        raise UserError(f"{NONFINITE_LOSS_ENV}: expected step numbers like 3,4, got {raw!r}") from None


def poison(losses: torch.Tensor, rank: int) -> torch.Tensor:
    """`losses` [B] with the first one NaN on rank 0 (still differentiable), unchanged elsewhere."""
    if rank != 0:
        return losses
    return torch.cat([losses[:1] * float("nan"), losses[1:]])

"""Test-only fault injection: never set this in a real run.

    LAI_TEST_NONFINITE_LOSS=STEP[,STEP...]   in every micro-step of these optimizer steps, rank 0's
                                             first sequence gets a NaN loss
    LAI_TEST_CRASH_AT_STEP=STEP              rank 0 dies (exit 13, no checkpoint) after optimizer
                                             step STEP of a run that started fresh; a resumed
                                             run passes it (a crash that a restart gets past)

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
CRASH_ENV = "LAI_TEST_CRASH_AT_STEP"
CRASH_EXIT = 13


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


def crash_if_due(step: int, rank: int, resumed: bool) -> None:
    """Exit the process at once (no clean-up, as a segfault or an OOM kill would) on rank 0 after
    step $LAI_TEST_CRASH_AT_STEP of a fresh run."""
    raw = os.environ.get(CRASH_ENV, "").strip()
    if raw and rank == 0 and not resumed and step == int(raw):
        print(f"{CRASH_ENV}: rank 0 crashes after step {step}", flush=True)
        os._exit(CRASH_EXIT)

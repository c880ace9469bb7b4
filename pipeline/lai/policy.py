"""FilterPolicy: which sequences of the global micro-batch are excluded before the step."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.comm import Comm

from .settings import DEFAULT_MAX_EXCLUDE_FRAC, check_policy


@dataclass
class FilterPolicy:
    """Rules, in order:
      1. step < warmup_steps: keep everything;
      2. candidates for exclusion: value <= threshold;
      3. at most floor(max_exclude_frac * N) and never all N of the global micro-batch are
         excluded: the lowest-valued candidates go first, the best-valued are kept beyond the
         cap; ties are broken by global position (lower position excluded first).
    Values are gathered over `group`, so every rank takes the same global decision."""
    threshold: float = 0.0
    warmup_steps: int = 0
    max_exclude_frac: float = DEFAULT_MAX_EXCLUDE_FRAC

    def __post_init__(self):
        check_policy(self.threshold, self.warmup_steps, self.max_exclude_frac)

    def mask(self, values: torch.Tensor, step: int, group=None) -> torch.Tensor:
        """bool [B_local], True = keep."""
        if values.dim() != 1 or values.numel() == 0:
            raise ValueError(f"values: expected a non-empty 1-D tensor, got "
                             f"{tuple(values.shape)}")
        comm = Comm.resolve(group)
        parts = comm.gather(values.detach().to(torch.float64))
        all_values = torch.cat(parts)
        if not torch.isfinite(all_values).all():
            raise ValueError("values: non-finite LAI value in the global micro-batch")
        offset = sum(p.numel() for p in parts[:comm.rank])
        keep = self.global_mask(all_values.cpu(), step)
        return keep[offset:offset + values.numel()].to(values.device)

    def global_mask(self, values: torch.Tensor, step: int) -> torch.Tensor:
        """The decision on the whole global micro-batch (float64 [N] -> bool [N])."""
        n = values.numel()
        keep = torch.ones(n, dtype=torch.bool)
        if step < self.warmup_steps:
            return keep
        cap = min(math.floor(self.max_exclude_frac * n), n - 1)
        order = torch.sort(values, stable=True).indices      # by value, then by position
        keep[order[values[order] <= self.threshold][:cap]] = False
        return keep

"""FilterPolicy: which sequences of a global micro-batch are excluded before the step.

The cap is a budget per optimizer step over the global batch of G sequences, carried
fractionally from step to step: step s (0-based) may exclude

    budget(s) = floor(f G (s + 1)) - floor(f G s)          f = max_exclude_frac

so the run excludes f of what it trains on average, also when f G < 1 (then one sequence every
1 / (f G) steps). A step of A global micro-batches of N = G / A sequences spends its budget in
order: by the end of its k-th micro-batch (k = 1..A) it may have excluded
floor(f G s + f N k) - floor(f G s), and each micro-batch excludes its lowest-valued candidates
within that allowance. The step's total never depends on the split; which candidates go does only
when a micro-batch holds more candidates than its allowance (with A = 1: the lowest of the step).
With lai.unit=document the candidates are the document units of a global micro-batch, whose
number varies from batch to batch: each global micro-batch then has its own budget,
floor(f x its units), nothing carried.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.comm import Comm

from .baselines import FILTERS
from .settings import DEFAULT_MAX_EXCLUDE_FRAC, check_policy


@dataclass
class FilterPolicy:
    """Rules, in order:
      1. step < warmup_steps: keep everything;
      2. candidates for exclusion: value <= threshold;
      3. at most `budget` (default: floor(max_exclude_frac * N), the budget of a step that is
         one global micro-batch of N) and never all N are excluded: the lowest-valued candidates
         go first; ties are broken by global position (lower position excluded first).
    Values are gathered over `group`, so every rank takes the same global decision."""
    threshold: float = 0.0
    warmup_steps: int = 0
    max_exclude_frac: float = DEFAULT_MAX_EXCLUDE_FRAC

    def __post_init__(self):
        check_policy(self.threshold, self.warmup_steps, self.max_exclude_frac)

    def allowance(self, step: int, global_batch: int, seen: int) -> int:
        """Exclusions step `step` (0-based) may have made once it has seen `seen` of its
        `global_batch` sequences (see the module doc; `seen` = global_batch: its budget)."""
        start = self.max_exclude_frac * global_batch * step
        return math.floor(round(start + self.max_exclude_frac * seen, 9)) \
            - math.floor(round(start, 9))

    def mask(self, values: torch.Tensor, step: int, group=None, budget: int | None = None
             ) -> torch.Tensor:
        """bool [B_local], True = keep."""
        return self.decide(values, step, group, budget)[0]

    def decide(self, values: torch.Tensor, step: int, group=None, budget: int | None = None
               ) -> tuple[torch.Tensor, int, int]:
        """(`mask`, N: sequences of the global micro-batch, how many of them are excluded)."""
        if values.dim() != 1 or values.numel() == 0:
            raise ValueError(f"values: expected a non-empty 1-D tensor, got "
                             f"{tuple(values.shape)}")
        comm = Comm.resolve(group)
        parts = comm.gather(values.detach().to(torch.float64))
        all_values = torch.cat(parts)
        if not torch.isfinite(all_values).all():
            raise ValueError("values: non-finite LAI value in the global micro-batch")
        offset = sum(p.numel() for p in parts[:comm.rank])
        keep = self.global_mask(all_values.cpu(), step, budget)
        local = keep[offset:offset + values.numel()].to(values.device)
        return local, keep.numel(), int((~keep).sum())

    def global_mask(self, values: torch.Tensor, step: int, budget: int | None = None
                    ) -> torch.Tensor:
        """The decision on the whole global micro-batch (float64 [N] -> bool [N])."""
        n = values.numel()
        keep = torch.ones(n, dtype=torch.bool)
        if step < self.warmup_steps:
            return keep
        if budget is None:
            budget = math.floor(self.max_exclude_frac * n)
        cap = max(0, min(budget, n - 1))
        order = torch.sort(values, stable=True).indices      # by value, then by position
        keep[order[values[order] <= self.threshold][:cap]] = False
        return keep


def describe(s, global_batch: int, micro: int, accum: int, world: int, steps: int) -> list[str]:
    """The filter's budget, what its decisions still depend on of the split (micro x accum x
    world), and a warning when it cannot exclude anything: lines for the start line and the dry
    run. `s`: resolved LAISettings."""
    if s.filter == "none":
        return []
    f, n = s.max_exclude_frac, micro * world
    per_step = f * global_batch
    if s.unit == "document":
        lines = [f"lai filter: excludes at most {f:g} of the document units of each global "
                 "micro-batch (lai.unit=document: their tokens leave the loss, not their "
                 "sequences)"]
    else:
        lines = [f"lai filter: excludes at most {per_step:.3g} sequence(s) per step (lai.max_"
                 f"exclude_frac {f:g} x global batch {global_batch}, fractions carried over steps"
                 f"{f'; one every {1 / per_step:.3g} steps' if 0 < per_step < 1 else ''})"]
    dep = ["never a whole global micro-batch"]
    if accum > 1:
        dep.append("which candidates go when a micro-batch holds more than its share of the "
                   "step's budget")
    if FILTERS[s.filter].needs_lai and s.normalize != "none":
        dep.append(f"the {s.normalize} normalisation over each global micro-batch")
    if s.filter in ("loss", "full_gradient"):
        dep.append(f"the {s.filter} scores against each global micro-batch")
    if s.enabled and FILTERS[s.filter].needs_lai:
        ref = {"val": f"the val reference ({s.val_batches * n} val sequences = lai.val_batches x "
                      "micro x ranks)",
               "local": "each rank's micro-batch", "global": "each global micro-batch"}
        dep.append(f"the LAI values against {ref[s.reference]}")
    if s.memory_weight > 0:
        dep.append("the memory, updated after each global micro-batch")
    lines.append(f"lai filter: its decisions depend on how the global batch is split (global "
                 f"micro-batch {n} = micro {micro} x {world} rank(s), {accum} per step) only "
                 f"through: {'; '.join(dep)}")
    why = ("lai.max_exclude_frac is 0" if per_step == 0 else
           f"lai.warmup_steps ({s.warmup_steps}) >= train.steps ({steps})"
           if s.warmup_steps >= steps else "")
    if why:
        lines.append(f"warning: lai filter: cannot exclude anything in this run: {why}")
    return lines

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

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from pipeline.comm import Comm
from pipeline.errors import need, need_one_of

from .baselines import FILTERS
from .normalize import NORMALIZE

# filter=lai's threshold per lai.filter.normalize (docs/RESULTS.md, headroom suite)
DEFAULT_THRESHOLD = {"none": 0.0, "zscore": -1.0, "rank": -0.4}


@dataclass
class FilterSettings:
    """lai.filter: which sequences are dropped (read by the Selector, FilterPolicy and the
    filters of pipeline.lai.selection.baselines)."""
    kind: str = "none"                 # what decides the keep mask: see pipeline.lai.selection.baselines
                                       # (lai | none | random | loss | full_gradient | oracle);
                                       # none by default: every per-sequence filter lost to no
                                       # filter in the headroom suite (docs/RESULTS.md), so what
                                       # ships values the data (ledger, report) and drops nothing
    normalize: str = "zscore"          # what kind=lai thresholds: none (the raw value) |
                                       # zscore | rank (against the global micro-batch; see
                                       # pipeline.lai.selection.normalize)
    threshold: float | None = None     # score <= threshold -> excluded; None: -1.0 for kind=lai
                                       # with normalize=zscore (one spread below the step's
                                       # mean), -0.4 with rank (the lowest 10%), else 0 (the
                                       # other filters' scores are built around 0)
    max_exclude_frac: float = 0.1      # cap on the excluded fraction of each global micro-batch,
                                       # in [0, 1] (never all of it); 0.5 hurt val loss in
                                       # docs/RESULTS.md, 0.1 did not
    baseline_rate: float = 0.1         # kind=random: exclusion probability; kind=loss: the
                                       # fraction of highest-loss sequences excluded
    oracle_sources: list[str] = field(default_factory=list)   # kind=oracle: names of training
                                       # sources (lai-prep --source NAME=...) whose sequences are
                                       # harmful: a sequence with at least half of its tokens
                                       # from them is excluded (under the cap, purest first)

    def check(self) -> None:
        """ValueError `lai.filter.<field>: ...` naming the first bad field."""
        k, t, f = "lai.filter.", self.threshold, self.max_exclude_frac
        need_one_of(self.kind, k + "kind", tuple(FILTERS))
        need_one_of(self.normalize, k + "normalize", NORMALIZE)
        need(t is None or (isinstance(t, (int, float)) and math.isfinite(t)), k + "threshold",
             f"must be a finite number, got {t!r}")
        need(0.0 <= f <= 1.0, k + "max_exclude_frac", f"must be in [0, 1], got {f!r}")
        need(self.kind != "oracle" or bool(self.oracle_sources), k + "oracle_sources",
             "lai.filter.kind=oracle needs the names of the harmful training sources, e.g. "
             "lai.filter.oracle_sources=[spam]")
        need(self.kind == "oracle" or not self.oracle_sources, k + "oracle_sources",
             f"set to {self.oracle_sources} but only lai.filter.kind=oracle reads it (kind is "
             f"{self.kind!r})")
        need(all(isinstance(n, str) and n for n in self.oracle_sources), k + "oracle_sources",
             f"expected a list of source names, got {self.oracle_sources!r}")
        need(0 <= self.baseline_rate < 1, k + "baseline_rate",
             f"must be in [0, 1), got {self.baseline_rate}")
        need(not FILTERS[self.kind].uses_rate or self.baseline_rate <= f, k + "baseline_rate",
             f"{self.baseline_rate} exceeds lai.filter.max_exclude_frac {f}, which caps every "
             "filter; raise lai.filter.max_exclude_frac")

    def resolved(self) -> FilterSettings:
        """Checked, with threshold=None -> kind=lai's default for its normalisation, else 0."""
        self.check()
        threshold = self.threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLD[self.normalize] if self.kind == "lai" else 0.0
        return dataclasses.replace(self, threshold=threshold)


def check_warmup(warmup_steps: int) -> None:
    """lai.warmup_steps (the LAISettings field every acting component reads)."""
    need(int(warmup_steps) == warmup_steps and warmup_steps >= 0, "lai.warmup_steps",
         f"must be an int >= 0, got {warmup_steps!r}")


class FilterPolicy:
    """Rules, in order:
      1. step < warmup_steps: keep everything;
      2. candidates for exclusion: value <= s.threshold;
      3. at most `budget` (default: floor(s.max_exclude_frac * N), the budget of a step that is
         one global micro-batch of N) and never all N are excluded: the lowest-valued candidates
         go first; ties are broken by global position (lower position excluded first).
    `s`: resolved FilterSettings (a number as threshold). Values are gathered over `group`, so
    every rank takes the same global decision."""

    def __init__(self, s: FilterSettings, warmup_steps: int):
        need(s.threshold is not None, "lai.filter.threshold",
             "FilterPolicy needs resolved settings (FilterSettings.resolved)")
        s.check()
        check_warmup(warmup_steps)
        self.s, self.warmup_steps = s, warmup_steps

    def allowance(self, step: int, global_batch: int, seen: int) -> int:
        """Exclusions step `step` (0-based) may have made once it has seen `seen` of its
        `global_batch` sequences (see the module doc; `seen` = global_batch: its budget)."""
        f = self.s.max_exclude_frac
        start = f * global_batch * step
        return math.floor(round(start + f * seen, 9)) \
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
            budget = math.floor(self.s.max_exclude_frac * n)
        cap = max(0, min(budget, n - 1))
        order = torch.sort(values, stable=True).indices      # by value, then by position
        keep[order[values[order] <= self.s.threshold][:cap]] = False
        return keep


def describe(s, global_batch: int, micro: int, accum: int, world: int, steps: int) -> list[str]:
    """The filter's budget, what its decisions still depend on of the split (micro x accum x
    world), and a warning when it cannot exclude anything: lines for the start line and the dry
    run. `s`: resolved LAISettings."""
    fs, sc = s.filter, s.score
    if fs.kind == "none":
        return []
    f, n = fs.max_exclude_frac, micro * world
    per_step = f * global_batch
    if s.unit == "document":
        lines = [f"lai filter: excludes at most {f:g} of the document units of each global "
                 "micro-batch (lai.unit=document: their tokens leave the loss, not their "
                 "sequences)"]
    else:
        lines = [f"lai filter: excludes at most {per_step:.3g} sequence(s) per step (lai.filter."
                 f"max_exclude_frac {f:g} x global batch {global_batch}, fractions carried over steps"
                 f"{f'; one every {1 / per_step:.3g} steps' if 0 < per_step < 1 else ''})"]
    dep = ["never a whole global micro-batch"]
    if accum > 1:
        dep.append("which candidates go when a micro-batch holds more than its share of the "
                   "step's budget")
    if FILTERS[fs.kind].needs_lai and fs.normalize != "none":
        dep.append(f"the {fs.normalize} normalisation over each global micro-batch")
    if fs.kind in ("loss", "full_gradient"):
        dep.append(f"the {fs.kind} scores against each global micro-batch")
    if s.enabled and FILTERS[fs.kind].needs_lai:
        ref = {"val": f"the val reference ({sc.val_batches * n} val sequences = "
                      "lai.score.val_batches x micro x ranks)",
               "local": "each rank's micro-batch", "global": "each global micro-batch"}
        dep.append(f"the LAI values against {ref[sc.reference]}")
    if s.memory.weight > 0:
        dep.append("the memory, updated after each global micro-batch")
    lines.append(f"lai filter: its decisions depend on how the global batch is split (global "
                 f"micro-batch {n} = micro {micro} x {world} rank(s), {accum} per step) only "
                 f"through: {'; '.join(dep)}")
    why = ("lai.filter.max_exclude_frac is 0" if per_step == 0 else
           f"lai.warmup_steps ({s.warmup_steps}) >= train.steps ({steps})"
           if s.warmup_steps >= steps else "")
    if why:
        lines.append(f"warning: lai filter: cannot exclude anything in this run: {why}")
    return lines

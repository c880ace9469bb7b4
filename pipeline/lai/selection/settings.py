"""LAISettings: the `lai:` section of the run config, one block per component, settled once.

    s = LAISettings(score=ScoreSettings(pairing="pooled")).resolved()   # s.score.sketch_dim 4096

Each block is a small dataclass beside the class that reads it, with one default per field and
one `check` (ValueError `lai.<block>.<field>: ...`, one line):

    lai.score      ScoreSettings      pipeline.lai.selection.scorer   (LAIScorer, the Selector)
    lai.filter     FilterSettings     pipeline.lai.selection.policy   (FilterPolicy, the filters, Selector)
    lai.memory     MemorySettings     pipeline.lai.selection.memory   (DocumentMemory, the Selector)
    lai.mixing     MixingSettings     pipeline.lai.selection.mixing   (SourceMixer, the data loader)
    lai.weighting  WeightingSettings  pipeline.lai.selection.weighting (sequence_weights)
    lai.select     SelectSettings     here (read by pipeline.train.pool, which config may not
                                      import)

`resolved()` runs every block's check, then the rules that span blocks (`check_across`, the one
place for them; the one that needs the resolved reference, mixing kind=value with a val
reference, right after it; rules with other sections: pipeline.config.validate), then fills in
what was left to LAI: score.sketch_dim=None with method=sketch -> the pairing's default;
score.reference=auto -> val when the run has val data, else global; filter.threshold=None -> the
normalisation's default; memory.weight=None -> 1.0 for a normalised filter kind=lai where the
documents are known. The run config resolves its `lai:`
section when it loads (pipeline.config.load), so RUN/config.yaml, the checkpoint and every
component see the concrete values; resolving a resolved LAISettings changes nothing. The
defaults are the ones the benchmarks support (docs/FIDELITY.md, docs/RESULTS.md).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from pipeline.errors import need, need_one_of

from .baselines import FILTERS
from .memory import MemorySettings
from .mixing import MixingSettings
from .policy import FilterSettings, check_warmup
from .scorer import ScoreSettings
from ..kernels.units import UNITS
from .weighting import WeightingSettings

DEFAULT_MEMORY_WEIGHT = 1.0       # memory.weight=None with a normalised filter kind=lai


@dataclass
class SelectSettings:
    """lai.select: oversampling (read by pipeline.train.pool and pipeline.config.batch)."""
    kind: str = "none"                 # none | oversample: score `factor` x the global batch per
                                       # step (forward only) and train the best global batch of
                                       # them, by the LAI values, or with LAI off by the
                                       # filter's scores (oracle with refill, loss-based)
    factor: float = 1.5                # kind=oversample: candidates per trained sequence, > 1

    def check(self) -> None:
        need_one_of(self.kind, "lai.select.kind", ("none", "oversample"))
        need(math.isfinite(self.factor) and self.factor > 1, "lai.select.factor",
             f"must be a finite number > 1, got {self.factor}")


@dataclass
class LAISettings:
    enabled: bool = True               # compute LAI values (and filter with them if
                                       # filter.kind=lai)
    unit: str = "sequence"             # what is valued, kept or dropped: sequence | document
                                       # (each document segment of a packed sequence: its
                                       # tokens masked out of the loss; pipeline.lai.kernels.units)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    filter: FilterSettings = field(default_factory=FilterSettings)
    warmup_steps: int = 0              # nothing acts on the values before this step: no
                                       # filtering, memory, mixing update or oversampled choice
    memory: MemorySettings = field(default_factory=MemorySettings)
    mixing: MixingSettings = field(default_factory=MixingSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    weighting: WeightingSettings = field(default_factory=WeightingSettings)

    def resolved(self, has_val: bool = False, has_documents: bool = False) -> LAISettings:
        """A checked copy with concrete values (ValueError `lai.<block>.<field>: ...` on a bad
        one). `has_val`: the run has val data (what score.reference=auto resolves by);
        `has_documents`: the selector knows the training documents (memory.weight=None)."""
        self.check()
        score = self.score.resolved(has_val)
        _check_mixing_reference(self, score.reference, has_val)
        memory = self.memory
        if memory.weight is None:
            normalised = self.filter.kind == "lai" and self.filter.normalize != "none"
            memory = dataclasses.replace(memory, weight=DEFAULT_MEMORY_WEIGHT if normalised
                                         and has_documents and self.unit == "sequence" else 0.0)
        return dataclasses.replace(self, score=score, filter=self.filter.resolved(),
                                   memory=memory)

    def check(self) -> None:
        """Every block's check, then the rules between blocks (resolved or not)."""
        for block in (self.score, self.filter, self.memory, self.mixing, self.select,
                      self.weighting):
            block.check()
        need_one_of(self.unit, "lai.unit", UNITS)
        check_warmup(self.warmup_steps)
        check_across(self)

    @property
    def is_resolved(self) -> bool:
        """Whether every value left to LAI is concrete (what a component may rely on)."""
        return (self.score.is_resolved and self.filter.threshold is not None
                and self.memory.weight is not None)


def check_across(s: LAISettings) -> None:
    """The rules between blocks (and with lai.enabled / lai.unit), in one place."""
    f, kind = FILTERS[s.filter.kind], s.filter.kind
    need(s.enabled or not f.needs_lai, "lai.filter.kind",
         f"{kind!r} needs lai.enabled=true (or use "
         f"{' | '.join(n for n, x in FILTERS.items() if not x.needs_lai)})")
    need(not s.memory.weight or (kind == "lai" and s.filter.normalize != "none"),
         "lai.memory.weight", "remembers normalised LAI scores: needs lai.filter.kind=lai and "
         "lai.filter.normalize=zscore|rank")
    need(s.mixing.kind != "value" or s.enabled, "lai.mixing.kind",
         "value needs lai.enabled=true (the weights follow the LAI values), or "
         "lai.mixing.kind=loss_bandit")
    need(s.select.kind == "none" or s.enabled == (kind == "none"), "lai.select.kind",
         f"{s.select.kind!r} ranks the candidates by one score: the LAI values "
         f"(lai.enabled=true, lai.filter.kind=none) or, without LAI, a baseline filter's "
         f"(lai.enabled=false, lai.filter.kind=oracle | loss | random); got "
         f"lai.enabled={s.enabled}, lai.filter.kind={kind!r}")
    need(s.weighting.kind == "none" or s.enabled, "lai.weighting.kind",
         f"{s.weighting.kind!r} weights by the LAI values: needs lai.enabled=true")
    if s.unit == "document":
        sc = s.score
        need(sc.method == "exact" or sc.pairing == "token_pair", "lai.unit",
             f"document: the {sc.pairing} sketch is per sequence; use "
             "lai.score.pairing=token_pair or lai.score.method=exact")
        need(not s.memory.weight, "lai.unit", "document: the memory remembers sequences; set "
             "lai.memory.weight=0")
        need(s.select.kind == "none", "lai.unit", "document: lai.select chooses whole "
             "sequences; set lai.select.kind=none")
        need(kind != "full_gradient", "lai.unit", "document: filter kind full_gradient scores "
             "whole sequences")


def _check_mixing_reference(s: LAISettings, reference: str, has_val: bool) -> None:
    """lai.mixing.kind=value steers towards what the reference stands for: with a global or
    local one (the training batch itself) that is self-influence, not a goal, so it must be
    asked for."""
    why = (f"lai.score.reference is {s.score.reference!r}" if s.score.reference != "auto" else
           "lai.score.reference=auto resolves to 'global' (the run has no val data)")
    fix = ("set lai.score.reference=val" if has_val else
           "set data.val_sources (or prepare the data with a val split) and "
           "lai.score.reference=val")
    need(s.mixing.kind != "value" or reference == "val" or s.mixing.without_val,
         "lai.mixing.kind",
         f"value steers the source weights towards the reference, and {why}: the training "
         f"batch itself (self-influence), not a goal; {fix}, or lai.mixing.without_val=true to "
         f"mix by {reference!r} anyway")

"""LAISettings: every LAI option, settled once (the `lai:` section of the run config).

    s = LAISettings(pairing="pooled", method="sketch").resolved()   # s.sketch_dim == 4096

`LAISettings(...)` holds what was asked for; `resolved()` checks every field (one ValueError whose
one-line message starts with `lai.<field>: `) and fills in what was left to LAI (`sketch_dim=None`
with method=sketch -> the pairing's measured default; reference=auto -> val when the run has val
data; threshold=None -> the normalisation's default; memory_weight=None -> 1.0 for a normalised
filter=lai where the documents are known). The run config resolves its `lai:` section
when it loads, so RUN/config.yaml, the checkpoint and every component see the concrete values.
The defaults are the ones the benchmarks support (docs/FIDELITY.md, docs/RESULTS.md).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .baselines import FILTERS
from ..kernels.capture import LAYER_SETS
from .mixing import MIXERS
from .normalize import NORMALIZE
from ..kernels.pairings import PAIRINGS
from ..kernels.precondition import PRECONDITIONS
from ..kernels.units import UNITS
from .weighting import WEIGHTINGS

METHODS = ("exact", "sketch")
REFERENCES = ("local", "global", "val")
DEFAULT_PAIRING = "token_pair"
DEFAULT_SKETCH_DIM = PAIRINGS[DEFAULT_PAIRING].default_sketch_dim
DEFAULT_MAX_EXCLUDE_FRAC = 0.1     # 0.5 hurt val loss in docs/RESULTS.md; 0.1 did not
# filter=lai's threshold per lai.normalize, and the memory weight (docs/RESULTS.md, headroom suite)
DEFAULT_THRESHOLD = {"none": 0.0, "zscore": -1.0, "rank": -0.4}
DEFAULT_MEMORY_WEIGHT = 1.0


@dataclass
class LAISettings:
    enabled: bool = True               # compute LAI values (and filter with them if filter=lai)
    filter: str = "none"               # what decides the keep mask: see pipeline.lai.selection.baselines
                                       # (lai | none | random | loss | full_gradient | oracle);
                                       # none by default: every per-sequence filter lost to no
                                       # filter in the headroom suite (docs/RESULTS.md), so what
                                       # ships values the data (ledger, report) and drops nothing
    oracle_sources: list[str] = field(default_factory=list)   # filter=oracle: names of training
                                       # sources (lai-prep --source NAME=...) whose sequences are
                                       # harmful: a sequence with at least half of its tokens
                                       # from them is excluded (under the cap, purest first)
    pairing: str = DEFAULT_PAIRING     # token_pair | aligned | pooled
    method: str = "sketch"             # sketch (scales: T-independent traffic) | exact
    layers: str = "linear"             # linear | blocks | head (the LM head alone: its exact
                                       # ghost term)
    reference: str = "auto"            # auto | local | global | val; auto: val when the run
                                       # has val data (data.val_sources or a val split), else
                                       # global (docs/RESULTS.md: the clean val reference did best)
    include_self: bool = False
    sketch_dim: int | None = None      # method=sketch: sketch size (None: the pairing's default);
                                       # method=exact: must stay unset
    compile: bool = True               # method=sketch on CUDA: torch.compile the sketch kernels
    precondition: str = "none"         # none | adam: score in AdamW's step geometry, P =
                                       # 1/(sqrt(v_hat)+eps) fitted rank-1 per layer
                                       # (pipeline.lai.kernels.precondition); layers linear or head
    precondition_every: int = 10       # precondition=adam: re-read Adam's second moments every
                                       # N steps (~ v's half-life at beta2 0.95: 14 steps)
    normalize: str = "zscore"          # what filter=lai thresholds: none (the raw value) |
                                       # zscore | rank (against the global micro-batch; see
                                       # pipeline.lai.selection.normalize)
    threshold: float | None = None     # score <= threshold -> excluded; None: -1.0 for
                                       # filter=lai with normalize=zscore (one spread below the
                                       # step's mean), -0.4 with rank (the lowest 10%), else 0
    memory_weight: float | None = None # > 0: memory across epochs (pipeline.lai.selection.memory): the
                                       # score adds this times the document's remembered score;
                                       # None: 1.0 for filter=lai with a normalised value where
                                       # the training documents are known (the trainer), else 0
    memory_decay: float = 0.5          # memory: weight of the older observations per new one
    warmup_steps: int = 0              # no filtering before this step
    max_exclude_frac: float = DEFAULT_MAX_EXCLUDE_FRAC   # cap on the excluded fraction of each
                                       # global micro-batch, in [0, 1] (never all of it)
    baseline_rate: float = 0.1         # filter=random: exclusion probability; filter=loss: the
                                       # fraction of highest-loss sequences excluded
    val_refresh_every: int = 100       # reference=val: recompute the val features every N steps
    val_batches: int = 2               # reference=val: micro-batches per rank in the reference
    mixing: bool = False               # the training sources' sampling weights follow an online
                                       # rule (pipeline.lai.selection.mixing); needs 2+ data.sources
    mixer: str = "value"               # lai.mixing's reward: value (EG on each source's mean
                                       # normalised LAI value; needs lai.enabled) | loss_bandit
                                       # (EXP3 on each source's training loss, as Online Data
                                       # Mixing; needs no LAI value)
    mixing_eta: float = 0.1            # mixer=value: EG step size: log-weight change per update
                                       # per unit of the source's running mean z-score
    mixing_ema: float = 0.9            # smoothing of each source's reward, in [0, 1)
    mixing_average: bool = False       # true: sample with the time-average of the weights over
                                       # the updates (DoGE) instead of the latest (which can swing
                                       # floor to floor when the val set is the mix); the
                                       # time-average is logged either way
    mixing_floor: float = 0.1          # share of the initial weights always kept, in [0, 1]
    mixing_every: int = 1              # update the weights every N optimizer steps
    mixing_groups: bool = False        # lai.mixing's arms are the (source, group) pairs of data
                                       # prepared with lai-prep --groups K (pipeline.data.groups)
    mixing_without_val: bool = False   # lai.mixing with a global or local reference (the
                                       # training batch itself: self-influence, no goal) is
                                       # refused unless this is true
    unit: str = "sequence"             # what is valued, kept or dropped: sequence | document
                                       # (each document segment of a packed sequence: its
                                       # tokens masked out of the loss; pipeline.lai.kernels.units)
    select: str = "none"               # none | oversample: score select_factor x the global
                                       # batch per step (forward only) and train the best
                                       # global batch of them (pipeline.train.pool), by the
                                       # LAI values, or with LAI off by the filter's scores
                                       # (oracle with refill, loss-based selection)
    select_factor: float = 1.5         # select=oversample: candidates per trained sequence, > 1
    weighting: str = "none"            # none | sigmoid: bounded per-sequence loss weights from
                                       # value_norm, inside the kept-token normalisation
                                       # (pipeline.lai.selection.weighting); nothing dropped by it
    weight_temperature: float = 1.0    # weighting=sigmoid: z-score scale of the sigmoid
    weight_min: float = 0.5            # weighting=sigmoid: raw weight bounds, 0 < min < max
    weight_max: float = 2.0            # (effective weights: in [min/max, max/min], mean 1)

    def resolved(self, has_val: bool = False, has_documents: bool = False) -> LAISettings:
        """A checked copy with concrete values (ValueError `lai.<field>: ...` on a bad one).
        `has_val`: the run has val data (what reference=auto resolves by); `has_documents`: the
        selector knows the training documents (what memory_weight=None resolves by)."""
        check(self)
        sketch_dim = self.sketch_dim
        if self.method == "sketch" and sketch_dim is None:
            sketch_dim = PAIRINGS[self.pairing].default_sketch_dim
        reference = self.reference
        if reference == "auto":
            reference = "val" if has_val else "global"
        _check_mixing_reference(self, reference, has_val)
        normalised = self.filter == "lai" and self.normalize != "none"
        threshold = self.threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLD[self.normalize] if self.filter == "lai" else 0.0
        memory = self.memory_weight
        if memory is None:
            memory = DEFAULT_MEMORY_WEIGHT if normalised and has_documents \
                and self.unit == "sequence" else 0.0
        return dataclasses.replace(self, sketch_dim=sketch_dim, reference=reference,
                                   threshold=threshold, memory_weight=memory)

    def scoring(self) -> dict:
        """The options that define the LAI values (what a cached reference depends on)."""
        return {k: getattr(self, k) for k in ("pairing", "method", "layers", "reference",
                                               "include_self", "sketch_dim", "precondition")}


def _check_mixing_reference(s: LAISettings, reference: str, has_val: bool) -> None:
    """lai.mixing steers towards what the reference stands for: with a global or local one (the
    training batch itself) that is self-influence, not a goal, so it must be asked for."""
    why = (f"lai.reference is {s.reference!r}" if s.reference != "auto" else
           "lai.reference=auto resolves to 'global' (the run has no val data)")
    fix = ("set lai.reference=val" if has_val else
           "set data.val_sources (or prepare the data with a val split) and lai.reference=val")
    _need(not s.mixing or s.mixer != "value" or reference == "val" or s.mixing_without_val,
          "mixing",
          f"steers the source weights towards the reference, and {why}: the training batch "
          f"itself (self-influence), not a goal; {fix}, or lai.mixing_without_val=true to mix "
          f"by {reference!r} anyway")


def _need(ok: bool, field: str, what: str) -> None:
    if not ok:
        raise ValueError(f"lai.{field}: {what}")


def _one_of(s: LAISettings, field: str, options) -> None:
    v = getattr(s, field)
    _need(v in options, field, f"{v!r} is not one of {', '.join(options)}")


def check_policy(threshold: float, warmup_steps: int, max_exclude_frac: float) -> None:
    """The filter policy's fields (also FilterPolicy's own check)."""
    _need(isinstance(threshold, (int, float)) and math.isfinite(threshold), "threshold",
          f"must be a finite number, got {threshold!r}")
    _need(int(warmup_steps) == warmup_steps and warmup_steps >= 0, "warmup_steps",
          f"must be an int >= 0, got {warmup_steps!r}")
    _need(0.0 <= max_exclude_frac <= 1.0, "max_exclude_frac",
          f"must be in [0, 1], got {max_exclude_frac!r}")


def check(s: LAISettings) -> None:
    """Raise ValueError naming the first bad field of `s` (unresolved or resolved)."""
    _one_of(s, "filter", tuple(FILTERS))
    _one_of(s, "pairing", tuple(PAIRINGS))
    _one_of(s, "method", METHODS)
    _one_of(s, "layers", LAYER_SETS)
    _one_of(s, "reference", ("auto", *REFERENCES))
    _one_of(s, "normalize", NORMALIZE)
    _one_of(s, "precondition", PRECONDITIONS)
    _need(s.precondition == "none" or s.layers != "blocks", "precondition",
          "adam needs lai.layers=linear or head (a block input feeds several linear layers, each "
          "with its own Adam column weights); set lai.layers or lai.precondition=none")
    _need(int(s.precondition_every) == s.precondition_every and s.precondition_every >= 1,
          "precondition_every", f"must be an int >= 1, got {s.precondition_every!r}")
    _need(s.enabled or not FILTERS[s.filter].needs_lai, "filter",
          f"{s.filter!r} needs lai.enabled=true (or use "
          f"{' | '.join(n for n, f in FILTERS.items() if not f.needs_lai)})")
    if s.method == "exact":
        _need(s.sketch_dim is None, "sketch_dim",
              f"{s.sketch_dim} is only used by lai.method=sketch (lai.method is exact); "
              "remove it (lai.sketch_dim=null) or set lai.method=sketch")
    elif s.sketch_dim is not None:
        PAIRINGS[s.pairing].split(s.sketch_dim)          # ValueError naming lai.sketch_dim
    check_policy(0.0 if s.threshold is None else s.threshold, s.warmup_steps, s.max_exclude_frac)
    memory = s.memory_weight
    _need(memory is None or (isinstance(memory, (int, float)) and math.isfinite(memory)
                             and memory >= 0), "memory_weight",
          f"must be a finite number >= 0, got {memory!r}")
    _need(not memory or (s.filter == "lai" and s.normalize != "none"), "memory_weight",
          "remembers normalised LAI scores: needs lai.filter=lai and lai.normalize=zscore|rank")
    _need(0 <= s.memory_decay < 1, "memory_decay", f"must be in [0, 1), got {s.memory_decay}")
    _need(s.filter != "oracle" or bool(s.oracle_sources), "oracle_sources",
          "lai.filter=oracle needs the names of the harmful training sources, e.g. "
          "lai.oracle_sources=[spam]")
    _need(s.filter == "oracle" or not s.oracle_sources, "oracle_sources",
          f"set to {s.oracle_sources} but only lai.filter=oracle reads it (filter is {s.filter!r})")
    _need(all(isinstance(n, str) and n for n in s.oracle_sources), "oracle_sources",
          f"expected a list of source names, got {s.oracle_sources!r}")
    _need(0 <= s.baseline_rate < 1, "baseline_rate", f"must be in [0, 1), got {s.baseline_rate}")
    _need(not FILTERS[s.filter].uses_rate or s.baseline_rate <= s.max_exclude_frac,
          "baseline_rate", f"{s.baseline_rate} exceeds lai.max_exclude_frac "
          f"{s.max_exclude_frac}, which caps every filter; raise lai.max_exclude_frac")
    _need(s.val_refresh_every >= 1, "val_refresh_every",
          f"must be >= 1, got {s.val_refresh_every}")
    _need(s.val_batches >= 1, "val_batches", f"must be >= 1, got {s.val_batches}")
    _one_of(s, "mixer", MIXERS)
    _need(not s.mixing or s.mixer != "value" or s.enabled, "mixing",
          "needs lai.enabled=true (the weights follow the LAI values), or lai.mixer=loss_bandit")
    _need(math.isfinite(s.mixing_eta) and s.mixing_eta >= 0, "mixing_eta",
          f"must be a finite number >= 0, got {s.mixing_eta}")
    _need(0 <= s.mixing_ema < 1, "mixing_ema", f"must be in [0, 1), got {s.mixing_ema}")
    _need(0 <= s.mixing_floor <= 1, "mixing_floor", f"must be in [0, 1], got {s.mixing_floor}")
    _need(s.mixing_every >= 1, "mixing_every", f"must be >= 1, got {s.mixing_every}")
    _need(not s.mixing_groups or s.mixing, "mixing_groups", "needs lai.mixing=true")
    _check_weighting(s)
    _check_unit(s)


def _check_unit(s: LAISettings) -> None:
    """lai.unit=document: what values, keeps and drops document segments."""
    _one_of(s, "unit", UNITS)
    if s.unit == "sequence":
        return
    _need(s.method == "exact" or s.pairing == "token_pair", "unit",
          f"document: the {s.pairing} sketch is per sequence; use lai.pairing=token_pair or "
          "lai.method=exact")
    _need(not s.memory_weight, "unit", "document: the memory remembers sequences; set "
          "lai.memory_weight=0")
    _need(s.select == "none", "unit", "document: lai.select chooses whole sequences; set "
          "lai.select=none")
    _need(s.filter != "full_gradient", "unit", "document: filter full_gradient scores whole "
          "sequences")


def _check_weighting(s: LAISettings) -> None:
    """lai.select and lai.weighting: what acts on the values besides the filter."""
    _one_of(s, "select", ("none", "oversample"))
    _need(s.select == "none" or s.enabled == (s.filter == "none"), "select",
          f"{s.select!r} ranks the candidates by one score: the LAI values (lai.enabled=true, "
          f"lai.filter=none) or, without LAI, a baseline filter's (lai.enabled=false, "
          f"lai.filter=oracle | loss | random); got lai.enabled={s.enabled}, "
          f"lai.filter={s.filter!r}")
    _need(math.isfinite(s.select_factor) and s.select_factor > 1, "select_factor",
          f"must be a finite number > 1, got {s.select_factor}")
    _one_of(s, "weighting", WEIGHTINGS)
    _need(s.weighting == "none" or s.enabled, "weighting",
          f"{s.weighting!r} weights by the LAI values: needs lai.enabled=true")
    _need(math.isfinite(s.weight_temperature) and s.weight_temperature > 0,
          "weight_temperature", f"must be a finite number > 0, got {s.weight_temperature}")
    _need(math.isfinite(s.weight_max) and 0 < s.weight_min < s.weight_max, "weight_min",
          f"need 0 < lai.weight_min < lai.weight_max (finite), got {s.weight_min} and "
          f"{s.weight_max}")

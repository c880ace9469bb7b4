"""The rows of the suite: each variant is a list of dotted trainer overrides, with $-placeholders
filled per scenario (`overrides_for`)."""
from __future__ import annotations

import string
from pathlib import Path

from benchmarks.headroom.scenarios import Scenario

# name -> dotted overrides. $cap = the scenario's exclusion cap (every filter gets
# lai.filter.max_exclude_frac=$cap first; a variant may override it), $harmful = the harmful sources,
# $rate = the exclusion rate RATE_FROM measured (those variants run after it),
# $rate_cap = a cap that excludes round($rate x global micro-batch) sequences, $clean = the
# ceiling's data.sources, $tuned = the static mixture that won the grid (GRID, on the first seed;
# those variants run after it). `lai-filter` is the trainer's LAI with the z-score filter switched
# on (lai.filter.kind=lai; everything else as shipped; the shipped default is lai.filter.kind=none, which
# trains exactly what `none` trains): after a change of the trainer's defaults, delete its runs to
# remeasure it. The other LAI variants change one thing of it each, so a row differs from
# `lai-filter` by what its name says.
LAI = ["lai.enabled=true", "lai.filter.kind=lai"]
OFF = ["lai.enabled=false"]
EXACT = ["lai.score.method=exact"]
RAW = ["lai.filter.normalize=none", "lai.filter.threshold=0.0", "lai.memory.weight=0.0"]   # value <= 0 dropped
SELECT = ["lai.select.kind=oversample", "lai.select.factor=2.0"]
VARIANTS: dict[str, list[str]] = {
    "none": OFF + ["lai.filter.kind=none"],
    "ceiling": OFF + ["lai.filter.kind=none", "data.sources=$clean"],
    "oracle": OFF + ["lai.filter.kind=oracle", "lai.filter.oracle_sources=[$harmful]"],
    "lai-filter": LAI,
    "lai-global": LAI + ["lai.score.reference=global"],
    "lai-token_pair": LAI + EXACT + ["lai.score.pairing=token_pair"],
    "lai-aligned": LAI + EXACT + ["lai.score.pairing=aligned"],
    "lai-pooled": LAI + EXACT + ["lai.score.pairing=pooled"],
    "lai-paper": LAI + EXACT + ["lai.score.pairing=aligned", "lai.score.include_self=true",
                                "lai.score.reference=local"] + RAW,
    "full-gradient": OFF + ["lai.filter.kind=full_gradient"],
    "loss@rate": OFF + ["lai.filter.kind=loss", "lai.filter.baseline_rate=$rate"],
    "random@rate": OFF + ["lai.filter.kind=random", "lai.filter.baseline_rate=$rate"],
    "mixing": ["lai.enabled=true", "lai.filter.kind=none", "lai.mixing.kind=value"],
    "mixing-avg": ["lai.enabled=true", "lai.filter.kind=none", "lai.mixing.kind=value",
                   "lai.mixing.average=true"],
    "bandit": OFF + ["lai.filter.kind=none", "lai.mixing.kind=loss_bandit"],
    "static-tuned": OFF + ["lai.filter.kind=none", "data.sources=$tuned"],
    # what each lever of the default buys (issue 10)
    "lai-raw": LAI + RAW,
    "lai-no-memory": LAI + ["lai.memory.weight=0.0"],
    "lai-adam": LAI + ["lai.score.precondition=adam"],
    "oracle@rate": OFF + ["lai.filter.kind=oracle", "lai.filter.oracle_sources=[$harmful]",
                          "lai.filter.max_exclude_frac=$rate_cap"],
    # lai.unit=document (packed scenarios): keep or drop each document of a sequence
    "oracle-doc": OFF + ["lai.filter.kind=oracle", "lai.filter.oracle_sources=[$harmful]",
                         "lai.unit=document"],
    "lai-doc": LAI + ["lai.unit=document", "lai.memory.weight=0.0"],
    "lai-doc-raw": LAI + RAW + ["lai.unit=document"],
    # selection at equal trained tokens: 2 x the global batch scored per step, the best half
    # trained; by the oracle (`oracle` with refill), by the lowest loss, by the LAI values
    "oracle-refill": OFF + ["lai.filter.kind=oracle", "lai.filter.oracle_sources=[$harmful]"] + SELECT,
    "loss-refill": OFF + ["lai.filter.kind=loss"] + SELECT,
    "select-lai": ["lai.enabled=true", "lai.filter.kind=none"] + SELECT,
    # soft reweighting beside drop and select: bounded loss weights from value_norm, nothing dropped
    "weight-lai": ["lai.enabled=true", "lai.filter.kind=none", "lai.weighting.kind=sigmoid"],
    # mixing over the groups lai-prep --groups K found (scenarios prepared with groups)
    "mixing-groups": ["lai.enabled=true", "lai.filter.kind=none", "lai.mixing.kind=value",
                      "lai.mixing.groups=true"],
    "bandit-groups": OFF + ["lai.filter.kind=none", "lai.mixing.kind=loss_bandit",
                            "lai.mixing.groups=true"],
}
# round two (issue 19): the exact-pairing rows, the global reference, the exact full gradient and
# the rate-matched drop baselines settled round one's questions and are levers now, so the suite
# fits in about an hour on a 2-core machine
SUITE = ("none", "ceiling", "oracle", "oracle-doc", "oracle-refill", "lai-filter", "lai-doc",
         "lai-doc-raw", "select-lai", "weight-lai", "loss-refill", "mixing", "mixing-avg",
         "mixing-groups", "bandit", "bandit-groups", "static-tuned")
LEVERS = ("lai-global", "full-gradient", "loss@rate", "random@rate", "lai-token_pair",
          "lai-aligned", "lai-pooled", "lai-paper", "lai-raw", "lai-no-memory", "lai-adam",
          "oracle@rate")
REFERENCES = ("none", "oracle", "oracle-doc")   # always run (where they apply): every row is
#   read against them
RATE_FROM = "lai-filter"           # the rate-matched baselines run at its exclusion rate
SCENARIO_ROWS = ("ceiling", "oracle", "oracle@rate", "oracle-doc", "lai-doc", "lai-doc-raw",
                 "oracle-refill", "loss-refill", "select-lai", "weight-lai", "mixing-groups",
                 "bandit-groups")
#   only where Scenario.applies says so
GRID = "grid"                       # the static mixtures of `grid`, run as GRID0, GRID1, ...
TUNED = "static-tuned"              # the grid's winner on all seeds


def needs_rate(overrides: list[str]) -> bool:
    return any("$rate" in o for o in overrides)


def runs_late(overrides: list[str]) -> bool:
    """The variant runs after the others: at RATE_FROM's rate or with the grid's winner."""
    return needs_rate(overrides) or any("$tuned" in o for o in overrides)


def applies(name: str, sc: Scenario) -> bool:
    if sc.only and name not in REFERENCES and name not in sc.only:
        return False
    return name not in SCENARIO_ROWS or name in sc.applies


def grid(sc: Scenario) -> list[dict[str, float]]:
    """The static mixtures the `static-tuned` row picks from (shares summing to 1, 5-8 of them):
    the declared weights, equal weights, and each source at 10% and at 60% with the others in
    their declared proportions."""
    total = sum(sc.weights.values())
    declared = {s: w / total for s, w in sc.weights.items()}
    out = [declared, {s: 1 / len(declared) for s in declared}]
    for s in declared if len(declared) > 1 else ():        # one source: one mixture
        for share in (0.1, 0.6):
            rest = (1 - share) / (1 - declared[s])
            out.append({t: share if t == s else w * rest for t, w in declared.items()})
    unique = {tuple(round(w, 6) for w in m.values()): m for m in out}
    return list(unique.values())


def sources_override(weights: dict[str, float], dirs: dict[str, Path]) -> str:
    """data.sources as a dotted-override value: `weights` over the prepared `dirs`."""
    return "[" + ", ".join(f"{{path: '{dirs[s]}', weight: {w:.6f}}}"
                           for s, w in weights.items()) + "]"

def filter_batch(size: dict, nproc: int) -> int:
    """Sequences of one global micro-batch (what the filter cap applies to) on `nproc` ranks."""
    from pipeline.config.batch import resolve_batch
    from pipeline.config.schema import TrainConfig
    t = TrainConfig(global_batch=size["global_batch"], micro_batch=size["micro_batch"],
                    grad_accum=0)
    resolve_batch(t, nproc)
    return t.micro_batch * nproc


def overrides_for(name: str, variants: dict, sc: Scenario, dirs: dict[str, Path], rate: float,
                  global_batch: int, tuned: dict[str, float] | None = None) -> list[str]:
    """The dotted overrides of variant `name` in scenario `sc` (GRID<i>: the i-th static mixture
    of `grid`); `global_batch`: sequences of one global micro-batch (what $rate_cap is for);
    `tuned`: the grid's winner ($tuned)."""
    if name.startswith(GRID) and name[len(GRID):].isdigit():
        mix = grid(sc)[int(name[len(GRID):])]
        return OFF + ["lai.filter.kind=none", f"data.sources={sources_override(mix, dirs)}"]
    ov = list(variants[name])
    if name not in ("none", "ceiling"):
        ov = [f"lai.filter.max_exclude_frac={sc.cap}"] + ov
    rate = min(rate, sc.cap) if rate == rate else 0.0
    subs = {"cap": f"{sc.cap}", "harmful": ",".join(sc.harmful), "rate": f"{rate:.4f}",
            "rate_cap": f"{(round(rate * global_batch) + 0.5) / global_batch:.4f}",
            "clean": f"[{{path: '{dirs.get(sc.clean)}', weight: 1.0}}]",
            "tuned": sources_override(tuned, dirs) if tuned else "$tuned"}
    return [string.Template(o).substitute(subs) for o in ov]

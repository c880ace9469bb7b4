"""The lai section's old flat keys and where they live now (one block per component).

MOVED drives everything about the old layout: the one-line error of a config file or a dotted
override that still uses an old key (pipeline.config.load), the conversion of a checkpoint's
saved config before resume compares it (pipeline.train.checkpointing.resume), of a recorded command line
(`migrate_overrides`, the benchmarks' finished runs), and the file rewriter
`python -m pipeline.config.migrate FILE` (pipeline.config.migrate). The one value that changes
form: `lai.mixing: true` with `lai.mixer: X` (default value) becomes `lai.mixing.kind: X`,
`lai.mixing: false` kind none.
"""
from __future__ import annotations

import copy

from pipeline.values import to_bool

MOVED: dict[str, str] = {
    "lai.filter": "lai.filter.kind",
    "lai.oracle_sources": "lai.filter.oracle_sources",
    "lai.normalize": "lai.filter.normalize",
    "lai.threshold": "lai.filter.threshold",
    "lai.max_exclude_frac": "lai.filter.max_exclude_frac",
    "lai.baseline_rate": "lai.filter.baseline_rate",
    "lai.pairing": "lai.score.pairing",
    "lai.method": "lai.score.method",
    "lai.layers": "lai.score.layers",
    "lai.reference": "lai.score.reference",
    "lai.include_self": "lai.score.include_self",
    "lai.sketch_dim": "lai.score.sketch_dim",
    "lai.compile": "lai.score.compile",
    "lai.precondition": "lai.score.precondition",
    "lai.precondition_every": "lai.score.precondition_every",
    "lai.val_refresh_every": "lai.score.val_refresh_every",
    "lai.val_batches": "lai.score.val_batches",
    "lai.memory_weight": "lai.memory.weight",
    "lai.memory_decay": "lai.memory.decay",
    "lai.mixing": "lai.mixing.kind",
    "lai.mixer": "lai.mixing.kind",
    "lai.mixing_eta": "lai.mixing.eta",
    "lai.mixing_ema": "lai.mixing.ema",
    "lai.mixing_average": "lai.mixing.average",
    "lai.mixing_floor": "lai.mixing.floor",
    "lai.mixing_every": "lai.mixing.every",
    "lai.mixing_groups": "lai.mixing.groups",
    "lai.mixing_without_val": "lai.mixing.without_val",
    "lai.select": "lai.select.kind",
    "lai.select_factor": "lai.select.factor",
    "lai.weighting": "lai.weighting.kind",
    "lai.weight_temperature": "lai.weighting.temperature",
    "lai.weight_min": "lai.weighting.min",
    "lai.weight_max": "lai.weighting.max",
}
HOW = "python -m pipeline.config.migrate FILE rewrites a config file"


def is_old(key: str, value: object = None) -> bool:
    """`key` (dotted) with `value` is the old layout: a moved key, and for the four names that
    are sections now (lai.filter, lai.mixing, lai.select, lai.weighting) not a mapping."""
    return key in MOVED and not isinstance(value, dict)


def moved(key: str) -> str:
    """The one-line error text for an old key."""
    hint = " (true with lai.mixer=X: lai.mixing.kind=X; false: none)" \
        if key in ("lai.mixing", "lai.mixer") else ""
    return f"{key}: moved to {MOVED[key]}{hint}"


def old_keys(d: dict) -> list[str]:
    """The old keys in a config mapping (its lai section), in file order."""
    lai = d.get("lai")
    if not isinstance(lai, dict):
        return []
    return [f"lai.{k}" for k, v in lai.items() if is_old(f"lai.{k}", v)]


def migrate(d: dict) -> tuple[dict, list[str]]:
    """(a copy of config mapping `d` in the new layout, the old keys it moved)."""
    keys = old_keys(d)
    if not keys:
        return d, []
    out = copy.deepcopy(d)
    lai = out["lai"]
    old = {k: lai.pop(k[len("lai."):]) for k in keys}
    mixer = old.pop("lai.mixer", "value")
    if "lai.mixing" in old:
        old["lai.mixing"] = mixer if to_bool(old["lai.mixing"]) else "none"
    for key, value in old.items():
        _, block, name = MOVED[key].split(".")
        lai.setdefault(block, {})[name] = value
    return out, keys


def migrate_overrides(args: list[str]) -> list[str]:
    """Dotted overrides (`key=value`) in the new layout, in order: an old key renamed (lai.mixing
    true|false -> lai.mixing.kind=value|none, then a later lai.mixer=X -> lai.mixing.kind=X),
    and an override that a later one of the same key replaces left out."""
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if eq and key in MOVED:
            if key == "lai.mixing":
                value = "value" if to_bool(value) else "none"
            a = f"{MOVED[key]}={value}"
        out.append(a)
    keys = [a.partition("=")[0] for a in out]
    return [a for i, a in enumerate(out) if keys[i] not in keys[i + 1:]]

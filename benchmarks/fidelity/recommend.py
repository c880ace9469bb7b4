"""Defaults computed from the tables."""
from __future__ import annotations

import math

import numpy as np

from benchmarks.fidelity.scoring import PAIRINGS


def recommend(summaries: dict, sweep: dict, costs: list, ckpts: list[int], sketch_dim, n_sketch: int) -> dict:
    """Defaults from the tables. Fidelity of a pairing = mean over trained checkpoints of Spearman
    + Pearson with the full gradient (global reference, exact, no self). The recommended pairing
    is the cheapest (exact cost ratio) among those within 0.05 of the best fidelity; include_self
    only if it separates the corrupted sequences clearly better (AUROC + 0.02); the sketch size is
    the smallest tested one reaching Pearson 0.95 with exact of that pairing within one standard
    error (mean + std / sqrt(n_sketch) >= 0.95; n_sketch = seeds x batches behind each mean)."""
    trained = [c for c in ckpts if c > 0] or ckpts
    final = ckpts[-1]

    def avg(ref, name, key):
        return float(np.nanmean([summaries[c][ref][name][key] for c in trained]))
    fid = {p: avg("global", f"{p} exact", "spearman") for p in PAIRINGS}
    pearson = {p: avg("global", f"{p} exact", "pearson") for p in PAIRINGS}
    score = {p: fid[p] + pearson[p] for p in PAIRINGS}
    cost = {p: next(r for n, _, r in costs if n == f"LAI {p} exact") for p in PAIRINGS}
    best = max(PAIRINGS, key=score.get)
    close = [p for p in PAIRINGS if score[p] >= score[best] - 0.05]
    pairing = min(close, key=cost.get)
    au = {s: summaries[final]["global"][f"{pairing} exact{' +self' if s else ''}"]["auroc"] for s in (False, True)}
    include_self = bool(au[True] > au[False] + 0.02)
    se = math.sqrt(n_sketch)
    reach = {p: [d for (q, d), r in sorted(sweep.items())
                 if q == p and r["vs_exact"][0] + r["vs_exact"][1] / se >= 0.95] for p in PAIRINGS}
    return {"pairing": pairing, "best_fidelity": best, "close": close, "spearman": fid, "pearson": pearson,
            "exact_cost": cost, "include_self": include_self, "auroc_self": au,
            "sketch_dim": min(reach[pairing]) if reach[pairing] else None,
            "sketch_reach": {p: (min(v) if v else None) for p, v in reach.items()},
            "trained_ckpts": trained, "table_sketch_dim": sketch_dim}

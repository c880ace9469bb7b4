"""Statistics of the benchmark reports (numpy only): correlations, AUROC, paired differences
over seeds with their 95% intervals, and the loss ranking score."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


def auroc(scores, positives) -> float:
    """P(score of a random positive > score of a random negative), ties count one half."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def sign_agreement(a, b, threshold: float = 0.0) -> float:
    """Fraction of items on which two scores make the same keep (> threshold) / drop decision."""
    a = np.asarray(a) > threshold
    b = np.asarray(b) > threshold
    return float((a == b).mean())


def within_group_percentile(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rank-normalise values to (0, 1] within each group (e.g. each scored batch), so scores from
    batches with different references can be pooled for AUROC."""
    out = np.empty(len(values), dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        out[m] = rankdata(values[m]) / m.sum()
    return out


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x == x], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def ci95(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval of the mean) of the finite xs (nan if < 2)."""
    a = np.asarray([x for x in xs if x == x], dtype=np.float64)
    if a.size < 2:
        return (float(a.mean()) if a.size else float("nan")), float("nan")
    t = _T975[a.size - 2] if a.size - 1 <= len(_T975) else 1.96
    return float(a.mean()), float(t * a.std(ddof=1) / np.sqrt(a.size))


def paired(by_seed: dict, ref: dict, key: str = "final_val_loss") -> list[float]:
    """by_seed[k][key] - ref[k][key] for every seed k both have (same init, same data order)."""
    return [by_seed[k][key] - ref[k][key] for k in by_seed if k in ref]


def steps_to_reach(steps: Sequence, vals: Sequence, target: float) -> float:
    """The first step whose value is <= target (nan: never)."""
    for s, v in zip(steps, vals):
        if v <= target:
            return float(s)
    return float("nan")



def median_minus_loss(losses: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """The loss ranking score the benchmarks report: median reference loss minus l_j (float64;
    reference = `losses` themselves unless `ref`). Higher = lower loss. (The trainer's loss filter,
    pipeline.lai.loss_scores, thresholds at its exclusion rate instead of the median.)"""
    losses = np.asarray(losses, dtype=np.float64)
    return float(np.median(losses if ref is None else np.asarray(ref, np.float64))) - losses

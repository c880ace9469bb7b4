"""The keep/drop list of a valuation (RUN/report/keep_drop.csv), what `lai-prep --exclude` reads
to build a cleaned corpus.

Decision rule: among the ranked documents (enough trained tokens, a value) measured at least
`min_measured` times (a single measurement is a noisy verdict), the `drop_frac` least valuable
by step-corrected value are marked "drop", but never one whose value is at or above its steps'
average (value_step >= 0): a corpus without harmful documents loses nothing. Every other trained
document is "keep". Each row's `confidence` is the probability, under a normal approximation,
that its decision is right: with value_step v (the mean of n = `measured` step-corrected values)
and one measurement's spread s (stats.measurement_noise),

    P(true value < 0) = Phi(-v sqrt(n) / s)      for "drop", 1 minus it for "keep"

(empty for a document without a value). Rows carry the provenance (`record`, `doc_hash`) that
links each to its original record and lets lai-prep find it again (pipeline.format.provenance).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from pipeline.format.provenance import KEEP_DROP_FIELDS
from pipeline.fsutil import atomic_write


def p_below_average(value_step: float | None, measured: int, noise: float) -> float | None:
    """Phi(-v sqrt(n) / s): how sure we are that the document is below its steps' average."""
    if value_step is None or measured < 1:
        return None
    return 0.5 * math.erfc(value_step * math.sqrt(measured) / (noise * math.sqrt(2.0)))


def decide(ranked: list[dict], unranked: list[dict], drop_frac: float, *,
           min_measured: int = 1, noise: float = 1.0) -> tuple[list[dict], int]:
    """(rows of the list, how many ranked documents were measured fewer than `min_measured`
    times). Rows: `ranked` document entries least valuable first, then `unranked` ones (kept);
    each a copy with "decision" and "confidence" set. `noise`: one measurement's spread
    (stats.measurement_noise)."""
    eligible = [e for e in ranked if e["measured"] >= min_measured]
    drop = {id(e) for e in eligible[:math.floor(drop_frac * len(eligible))]
            if e["value_step"] is not None and e["value_step"] < 0}
    rows = []
    for e in ranked + unranked:
        p = p_below_average(e["value_step"], e["measured"], noise)
        decision = "drop" if id(e) in drop else "keep"
        confidence = None if p is None else round(p if decision == "drop" else 1.0 - p, 4)
        rows.append({**e, "decision": decision, "confidence": confidence})
    return rows, len(ranked) - len(eligible)


def write(path: Path, rows: list[dict]) -> int:
    """Write the list atomically; returns how many documents it drops."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=KEEP_DROP_FIELDS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
    return sum(r["decision"] == "drop" for r in rows)

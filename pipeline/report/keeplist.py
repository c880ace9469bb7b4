"""The keep/drop list of a valuation (RUN/report/keep_drop.csv), what `lai-prep --exclude` reads
to build a cleaned corpus.

Decision rule: among the ranked documents (enough trained tokens, a value), the `drop_frac`
least valuable by step-corrected value are marked "drop", but never one whose value is at or
above its steps' average (value_step >= 0): a corpus without harmful documents loses nothing.
Every other trained document is "keep". Rows carry the provenance (`record`, `doc_hash`) that
links each to its original record and lets lai-prep find it again (pipeline.format.provenance).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from pipeline.format.provenance import KEEP_DROP_FIELDS
from pipeline.fsutil import atomic_write


def decide(ranked: list[dict], unranked: list[dict], drop_frac: float) -> list[dict]:
    """Rows of the list: `ranked` document entries least valuable first, then `unranked` ones
    (kept); each a copy with "decision" set."""
    n_drop = math.floor(drop_frac * len(ranked))
    rows = []
    for i, e in enumerate(ranked):
        drop = i < n_drop and e["value_step"] is not None and e["value_step"] < 0
        rows.append({**e, "decision": "drop" if drop else "keep"})
    rows += [{**e, "decision": "keep"} for e in unranked]
    return rows


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

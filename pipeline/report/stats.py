"""Attribution arithmetic of the report: which documents each ledger sequence covers, each
value corrected for its step, and token-weighted statistics per group (source, document, step
bin)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from pipeline.data import PackedDataset


@dataclass
class Spans:
    """The (sequence, document) pairs of the ledger: row index into the ledger, document index
    into `docs`, and how many of the document's tokens the sequence holds. 1-D int64 arrays."""
    row: np.ndarray
    doc: np.ndarray
    tokens: np.ndarray
    docs: list[tuple[str, str, int]]         # (source, shard, doc) per document index


def locate_all(rows: np.ndarray, dataset: PackedDataset) -> Spans:
    """DocSpans of every ledger row via `dataset.locate(seq_id)`: all of the sequence's, or the
    one document run of a document unit (segment >= 0, lai.unit=document)."""
    index: dict[tuple[str, str, int], int] = {}
    row, doc, tokens = [], [], []
    segments = rows["segment"].tolist() if "segment" in (rows.dtype.names or ()) \
        else [-1] * rows.size
    for i, (seq_id, seg) in enumerate(tqdm(zip(rows["seq_id"].tolist(), segments),
                                           total=rows.size, desc="locate", unit="seq",
                                           mininterval=1.0, disable=None)):
        spans = dataset.locate(seq_id)
        for span in spans if seg < 0 else spans[seg:seg + 1]:
            key = (span.source, span.shard, int(span.doc))
            row.append(i)
            doc.append(index.setdefault(key, len(index)))
            tokens.append(span.num_tokens)
    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Spans(as64(row), as64(doc), as64(tokens), list(index))


STEP_ZSCORE = "z-score of the value among its step's global batch"
LEDGER_NORM = "value_norm: the ledger's step-normalised value"


def step_corrected(rows: np.ndarray) -> tuple[np.ndarray, str]:
    """Each row's value corrected for its step (float64, NaN where not scored) and how.

    Raw values shrink by orders of magnitude as training goes (gradients shrink), so ranking by
    them lists what was seen early. The ledger's `value_norm` column is used when it holds
    values (runs that record it); otherwise each value becomes its z-score among the rows of
    its optimizer step (the whole global batch, all ranks): (value - the step's mean) / the
    step's standard deviation, 0 when they are all equal. Either way 0 = as good as the step's
    average, < 0 = worse than its batch mates."""
    if "value_norm" in (rows.dtype.names or ()) and np.isfinite(rows["value_norm"]).any():
        return rows["value_norm"].astype(np.float64), LEDGER_NORM
    value = rows["value"].astype(np.float64)
    scored = np.isfinite(value)
    steps, inv = np.unique(rows["step"], return_inverse=True)
    n = np.bincount(inv, weights=scored, minlength=steps.size)
    v = np.where(scored, value, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(inv, weights=v, minlength=steps.size) / n
        var = np.bincount(inv, weights=np.where(scored, (value - mean[inv]) ** 2, 0.0),
                          minlength=steps.size) / n
        z = (value - mean[inv]) / np.sqrt(var[inv])
    z[scored & ~np.isfinite(z)] = 0.0                           # a step of equal values
    return z, STEP_ZSCORE


def row_group_pairs(span_row: np.ndarray, group: np.ndarray, n_groups: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (ledger row, group) pairs of the spans, sorted by row then group: (rows,
    groups, each span's pair index), so a sequence with several spans in a group counts once."""
    pair, inv = np.unique(span_row * n_groups + group, return_inverse=True)
    return pair // n_groups, pair % n_groups, inv


def group_stats(rows: np.ndarray, span_row: np.ndarray, group: np.ndarray, tokens: np.ndarray,
                n_groups: int, corrected: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Token-weighted mean value (over scored, i.e. finite, values; NaN if none), excluded
    fraction and mean loss per group; `sequences` counts each (sequence, group) pair once,
    `measured` those with a value, and `tokens` sums the group's trained tokens. With
    `corrected` (one per row, see step_corrected) also its token-weighted mean, `value_step`."""
    prow, pgroup, inv = row_group_pairs(span_row, group, n_groups)
    tok = np.bincount(inv, weights=tokens)                     # tokens per (sequence, group)
    excluded = ~rows["kept"][prow]
    value = rows["value"][prow]
    scored = np.isfinite(value)                                 # NaN = not scored (LAI off)

    def wsum(w):
        return np.bincount(pgroup, weights=w, minlength=n_groups)

    def wmean(x):
        ok = np.isfinite(x)
        return wsum(np.where(ok, tok * x, 0.0)) / wsum(tok * ok)
    total = wsum(tok)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"sequences": np.bincount(pgroup, minlength=n_groups),
               "measured": np.bincount(pgroup, weights=scored, minlength=n_groups).astype(np.int64),
               "tokens": total, "mean_value": wmean(value),
               "excluded_frac": wsum(tok * excluded) / total,
               "mean_loss": wsum(tok * rows["loss"][prow].astype(np.float64)) / total}
        if corrected is not None:
            out["value_step"] = wmean(corrected[prow])
    return out


def measurement_noise(span_row: np.ndarray, span_doc: np.ndarray, corrected: np.ndarray,
                      n_docs: int) -> float:
    """The spread of one measurement of a document: the pooled within-document standard
    deviation of its sequences' step-corrected values (each (sequence, document) pair once,
    unweighted), over the documents measured at least twice; 1.0 (the z-score's unit: no
    document was measured twice) if there are none."""
    row, doc, _ = row_group_pairs(span_row, span_doc, n_docs)
    x = corrected[row]
    ok = np.isfinite(x)
    row, doc, x = row[ok], doc[ok], x[ok]
    n = np.bincount(doc, minlength=n_docs)
    mean = np.bincount(doc, weights=x, minlength=n_docs) / np.maximum(n, 1)
    dof = int((n[n >= 2] - 1).sum())
    if dof == 0:
        return 1.0
    return float(np.sqrt(((x - mean[doc]) ** 2).sum() / dof))

"""Attribution arithmetic of the report: which documents each ledger sequence covers, and
token-weighted statistics per group (source, document, step bin)."""
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
    """DocSpans of every ledger row via `dataset.locate(seq_id)`."""
    index: dict[tuple[str, str, int], int] = {}
    row, doc, tokens = [], [], []
    for i, seq_id in enumerate(tqdm(rows["seq_id"].tolist(), desc="locate", unit="seq",
                                    mininterval=1.0, disable=None)):
        for span in dataset.locate(seq_id):
            key = (span.source, span.shard, int(span.doc))
            row.append(i)
            doc.append(index.setdefault(key, len(index)))
            tokens.append(span.num_tokens)
    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Spans(as64(row), as64(doc), as64(tokens), list(index))


def group_stats(rows: np.ndarray, span_row: np.ndarray, group: np.ndarray, tokens: np.ndarray,
                n_groups: int) -> dict[str, np.ndarray]:
    """Token-weighted mean value (over scored, i.e. finite, values; NaN if none), excluded
    fraction and mean loss per group; `sequences` counts each (sequence, group) pair once and
    `tokens` sums the group's trained tokens."""
    pair, inv = np.unique(span_row * n_groups + group, return_inverse=True)
    tok = np.bincount(inv, weights=tokens)                     # tokens per (sequence, group)
    prow, pgroup = pair // n_groups, pair % n_groups
    excluded = ~rows["kept"][prow]
    value = rows["value"][prow]
    scored = np.isfinite(value)                                 # NaN = not scored (LAI off)

    def wsum(w):
        return np.bincount(pgroup, weights=w, minlength=n_groups)
    total = wsum(tok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sequences": np.bincount(pgroup, minlength=n_groups), "tokens": total,
                "mean_value": wsum(np.where(scored, tok * value, 0.0)) / wsum(tok * scored),
                "excluded_frac": wsum(tok * excluded) / total,
                "mean_loss": wsum(tok * rows["loss"][prow].astype(np.float64)) / total}

"""The valuation of a run: its ledger rows attributed to documents and sources.

Inputs: RUN/data.json (PackedDataset's arguments, to locate every sequence's documents; if it
also holds "fingerprint" = PackedDataset.fingerprint, re-prepared data is refused; "mixing": true
for a lai.mixing run), the ledger (pipeline.format.ledger), the dataset's tokenizer (for text
snippets) and, for a lai.mixing run, RUN/mixing.json (the mixture's trajectory).
A sequence's value, keep flag and loss are attributed to every document it covers, weighted by
the number of the document's tokens in it; so a document's (or source's)

    mean_value    = sum_seq tokens * value / sum_seq tokens
    value_step    = the same mean of the value corrected for its step (stats.step_corrected:
                    the ledger's value_norm when it has one, else the z-score among the step's
                    global batch), so that early, large values do not rank first
    excluded_frac = sum_seq tokens * [not kept] / sum_seq tokens    (trained-token weighted)
    sequences     = how many ledger sequences covered it (over all epochs); measured = how many
                    of them had a value

Documents are ranked by value_step. Each links back to its original record (file and line,
Parquet row, HF row: pipeline.format.provenance) when lai-prep recorded it.

Outputs (each written atomically), under RUN/report/:
    report.md       summary, per-source table, the mixture (initial vs final weights, served
                    shares) of a lai.mixing run, val loss per source (first and last eval),
                    most/least valuable documents with snippets
    report.json     the same numbers, machine readable
    documents.csv   every trained document, least valuable first
    keep_drop.csv   the decision per document (pipeline.report.keeplist): what
                    `lai-prep --exclude RUN/report/keep_drop.csv` leaves out of a cleaned corpus
    valuation.png   over training: each source's mean step-corrected value, the sampling
                    weights, the val loss of each source's val split (RUN/tb, report.curves)
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from pipeline.data import PackedDataset
from pipeline.errors import UserError
from pipeline.format.manifest import load_manifest
from pipeline.format.provenance import hash_hex, read_docs, record
from pipeline.format.tokenizer import load_tokenizer
from pipeline.fsutil import atomic_write, atomic_write_json, read_json
from pipeline.report import keeplist
from pipeline.report.curves import val_curves
from pipeline.report.render import markdown, plot
from pipeline.report.stats import group_stats, locate_all, measurement_noise, step_corrected
from pipeline.format.ledger import read_ledger


# ---------------------------------------------------------------------------- inputs

def load_data_spec(run_dir: Path) -> dict:
    """RUN/data.json, validated: {"sources": [[dir, weight], ...], "seq_len": int, "seed": int}."""
    path = run_dir / "data.json"
    spec = read_json(path, "missing (not a lai-train run directory?)")
    for key, kind in (("sources", list), ("seq_len", int), ("seed", int)):
        if not isinstance(spec.get(key), kind):
            raise UserError(f"{path}: field '{key}' is missing or not of type {kind.__name__}")
    if not spec["sources"] or not all(isinstance(s, list) and len(s) == 2 for s in spec["sources"]):
        raise UserError(f"{path}: field 'sources' must be a non-empty list of [data_dir, weight]")
    if not isinstance(spec.get("mixing", False), bool):
        raise UserError(f"{path}: field 'mixing' must be true or false")
    return spec


def build_dataset(spec: dict) -> PackedDataset:
    """The run's training PackedDataset."""
    return PackedDataset([(Path(d), float(w)) for d, w in spec["sources"]], spec["seq_len"],
                         split="train", seed=spec["seed"], mixing=spec.get("mixing", False),
                         groups=spec.get("groups", False))


# ---------------------------------------------------------------------------- snippets

class Snippets:
    """Decoded text of whole documents: tokens from the dataset's mapped shards, text from its
    tokenizer."""

    def __init__(self, dataset: PackedDataset, max_tokens: int = 96, max_chars: int = 200):
        self.dataset, self.max_tokens, self.max_chars = dataset, max_tokens, max_chars
        self._decode = load_tokenizer(dataset.tokenizer.kind, dataset.tokenizer_path).decode

    def __call__(self, source: str, shard: str, doc: int) -> str:
        ids = self.dataset.document_tokens(source, shard, doc)
        text = " ".join(self._decode([int(t) for t in ids[:self.max_tokens]]).split())
        if len(text) > self.max_chars or len(ids) > self.max_tokens:
            text = text[:self.max_chars].rstrip() + "…"
        return text


class Provenance:
    """Each document's original record and text hash, from its shard's sidecar and its data
    directory's manifest ("" where lai-prep recorded none)."""

    def __init__(self, dataset: PackedDataset):
        self.dataset = dataset
        self._rows: dict[tuple[str, str], np.ndarray | None] = {}
        self._sources: dict[Path, dict[str, dict]] = {}

    def __call__(self, source: str, shard: str, doc: int) -> dict[str, str]:
        data_dir = self.dataset.data_dir(source, shard)
        if (source, shard) not in self._rows:
            self._rows[(source, shard)] = read_docs(data_dir / shard)
        rows = self._rows[(source, shard)]
        if rows is None:
            return {"record": "", "doc_hash": ""}
        if data_dir not in self._sources:
            self._sources[data_dir] = {s["name"]: s for s in load_manifest(data_dir).sources}
        row = rows[doc]
        return {"record": record(self._sources[data_dir].get(source, {}), int(row["file"]),
                                 int(row["pos"])),
                "doc_hash": hash_hex(row["hash"])}


# ---------------------------------------------------------------------------- report

def _clean(x):
    """JSON-safe number (NaN -> None)."""
    x = float(x)
    return None if not math.isfinite(x) else x


def _load(run_dir: Path) -> tuple[np.ndarray, PackedDataset]:
    """The committed ledger rows and the run's training dataset (refused if re-prepared)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    rows = read_ledger(run_dir)
    if rows.size == 0:
        raise UserError(f"{run_dir / 'ledger'}: no committed rows yet")
    spec = load_data_spec(run_dir)
    dataset = build_dataset(spec)
    if spec.get("fingerprint", dataset.fingerprint) != dataset.fingerprint:
        raise UserError(f"{run_dir / 'data.json'}: the data directories no longer produce the "
                        "run's sample order (fingerprint differs): were they re-prepared?")
    return rows, dataset


def mixing_trajectory(run_dir: Path, dataset: PackedDataset) -> dict | None:
    """A lai.mixing run's RUN/mixing.json (its weights as of the latest checkpoint), checked
    against the run's sources; None for a static blend."""
    if not dataset.mixing:
        return None
    path = run_dir / "mixing.json"
    traj = read_json(path, "missing (the run saved no checkpoint yet?)")
    if traj.get("sources") != dataset.source_names:
        raise UserError(f"{path}: sources {traj.get('sources')} differ from the run's data "
                        f"({dataset.source_names})")
    return traj


def mixture(traj: dict | None, rows: np.ndarray, dataset: PackedDataset) -> dict | None:
    """A lai.mixing run's mixture: per weighted source its initial and final sampling weight
    (`traj`: mixing_trajectory) and the share of the ledger's sequences it served, over the run
    and over its last quarter of steps. None for a static blend."""
    if traj is None:
        return None
    src = dataset.source_of(rows["seq_id"])
    first, last = int(rows["step"].min()), int(rows["step"].max())
    late = rows["step"] >= last + 1 - (last - first + 1) / 4

    def share(sel: np.ndarray) -> np.ndarray:
        return np.bincount(src[sel], minlength=len(dataset.source_names)) / max(int(sel.sum()), 1)
    served, served_late = share(np.ones(len(rows), bool)), share(late)
    return {"step": traj["steps"][-1], "updates": len(traj["steps"]) - 1,
            "sources": [{"source": n, "initial": traj["initial"][i], "final": traj["final"][i],
                         "served": float(served[i]), "served_late": float(served_late[i])}
                        for i, n in enumerate(dataset.source_names)]}


def weights_over_time(traj: dict | None, dataset: PackedDataset, last: int) -> dict:
    """The sampling weights over the run, for the plot: a lai.mixing run's trajectory (`traj`:
    mixing_trajectory, held to step `last`), else the static blend's weights."""
    if traj is not None:
        steps, weights = list(traj["steps"]), list(traj["weights"])
        if steps[-1] < last:
            steps, weights = steps + [last], weights + [weights[-1]]
        return {"names": traj["sources"], "steps": steps, "weights": weights, "static": False}
    w = [x / sum(dataset.weights) for x in dataset.weights]
    return {"names": dataset.source_names, "steps": [0, last], "weights": [w, w], "static": True}


def _counts(stats: dict[str, np.ndarray], i: int) -> dict:
    return {k: (int(v[i]) if k in ("sequences", "measured", "tokens") else _clean(v[i]))
            for k, v in stats.items()}


def build_report(run_dir: str | Path, *, top: int = 10, min_tokens: int = 16,
                 drop_frac: float = 0.1, min_measured: int = 2) -> dict:
    """Compute the valuation of a run and write RUN/report/*; returns the report.json dict.
    `drop_frac`: the least valuable fraction of the ranked documents measured at least
    `min_measured` times that keep_drop.csv drops."""
    run_dir = Path(run_dir)
    rows, dataset = _load(run_dir)
    traj = mixing_trajectory(run_dir, dataset)
    spans = locate_all(rows, dataset)
    corrected, method = step_corrected(rows)
    sources = sorted({k[0] for k in spans.docs})
    src_of_doc = np.array([sources.index(k[0]) for k in spans.docs], dtype=np.int64)
    per_src = group_stats(rows, spans.row, src_of_doc[spans.doc], spans.tokens, len(sources),
                          corrected)
    per_doc = group_stats(rows, spans.row, spans.doc, spans.tokens, len(spans.docs), corrected)
    snippet, provenance = Snippets(dataset), Provenance(dataset)

    def doc_entry(i: int, with_text: bool) -> dict:
        source, shard, doc = spans.docs[i]
        e = {"source": source, "shard": shard, "doc": doc, **_counts(per_doc, i),
             **provenance(source, shard, doc)}
        if with_text:
            e["snippet"] = snippet(source, shard, doc)
        return e

    order = np.lexsort((np.arange(len(spans.docs)), per_doc["value_step"]))   # ascending, stable
    rankable = (per_doc["tokens"] >= min_tokens) & np.isfinite(per_doc["value_step"])
    ranked = [int(i) for i in order if rankable[i]]
    steps = np.unique(rows["step"])
    out = run_dir / "report"
    keep_drop = write_keep_drop(
        out / "keep_drop.csv", [doc_entry(i, False) for i in ranked],
        [doc_entry(int(i), False) for i in order if not rankable[i]], drop_frac, min_measured,
        measurement_noise(spans.row, spans.doc, corrected, len(spans.docs)))
    report = {
        "run_dir": str(run_dir),
        "sequences": int(rows.size),
        "steps": {"count": int(steps.size), "first": int(steps[0]), "last": int(steps[-1])},
        "excluded_frac": float((~rows["kept"]).mean()),
        "mean_value": _clean(np.nanmean(rows["value"])) if np.isfinite(rows["value"]).any()
        else None,
        "mean_loss": _clean(rows["loss"].astype(np.float64).mean()),
        "value_step_method": method,
        "sources": [{"source": name, **_counts(per_src, s)} for s, name in enumerate(sources)],
        "mixing": mixture(traj, rows, dataset),
        "val": val_curves(run_dir),
        "documents": {
            "count": len(spans.docs), "ranked": len(ranked), "min_tokens": min_tokens,
            "most_valuable": [doc_entry(i, True) for i in ranked[::-1][:top]],
            "least_valuable": [doc_entry(i, True) for i in ranked[:top]],
        },
        "keep_drop": keep_drop,
    }
    atomic_write_json(out / "report.json", report)
    _write_csv(out / "documents.csv", (doc_entry(int(i), False) for i in order))
    plot(out / "valuation.png", rows, spans, sources, src_of_doc, corrected,
         weights_over_time(traj, dataset, int(steps[-1])), report["val"])
    with atomic_write(out / "report.md", "w") as f:
        f.write(markdown(report))
    return report


def write_keep_drop(path: Path, ranked: list[dict], unranked: list[dict], drop_frac: float,
                    min_measured: int, noise: float) -> dict:
    """keep_drop.csv (pipeline.report.keeplist) from the document entries, least valuable
    first; returns its report.json entry."""
    rows, too_few = keeplist.decide(ranked, unranked, drop_frac, min_measured=min_measured,
                                    noise=noise)
    return {"path": str(path), "drop_frac": drop_frac, "dropped": keeplist.write(path, rows),
            "min_measured": min_measured, "too_few_measurements": too_few,
            "measurement_sd": noise}


def _write_csv(path: Path, entries) -> None:
    buf = io.StringIO()
    fields = ["source", "shard", "doc", "sequences", "measured", "tokens", "value_step",
              "mean_value", "excluded_frac", "mean_loss", "record", "doc_hash"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(entries)
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())

"""`lai-report RUN_DIR`: turn a run's valuation ledger into a per-source / per-document data
valuation.

Inputs: RUN/data.json (PackedDataset's arguments, to locate every sequence's documents; if it
also holds "fingerprint" = PackedDataset.fingerprint, re-prepared data is refused), the ledger
(pipeline.ledger) and the dataset's tokenizer (for text snippets).
A sequence's value, keep flag and loss are attributed to every document it covers, weighted by
the number of the document's tokens in it; so a document's (or source's)

    mean_value    = sum_seq tokens * value / sum_seq tokens
    excluded_frac = sum_seq tokens * [not kept] / sum_seq tokens    (trained-token weighted)
    sequences     = how many ledger sequences covered it (over all epochs)

Outputs (each written atomically), under RUN/report/:
    report.md       summary, per-source table, most/least valuable documents with snippets
    report.json     the same numbers, machine readable
    documents.csv   every trained document, least valuable first (the list to act on)
    valuation.png   excluded fraction over training and value distribution early vs late
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data import PackedDataset
from pipeline.errors import UserError, cli_main
from pipeline.fsutil import atomic_write, atomic_write_json, read_json
from pipeline.ledger import read_ledger


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
    return spec


def build_dataset(spec: dict) -> PackedDataset:
    """The run's training PackedDataset."""
    return PackedDataset([(Path(d), float(w)) for d, w in spec["sources"]], spec["seq_len"],
                         split="train", seed=spec["seed"])


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


# ---------------------------------------------------------------------------- snippets

class Snippets:
    """Decoded text of whole documents: tokens from the dataset's mapped shards, text from its
    tokenizer (sentencepiece model file or HF tokenizer directory)."""

    def __init__(self, dataset: PackedDataset, max_tokens: int = 96, max_chars: int = 200):
        self.dataset, self.max_tokens, self.max_chars = dataset, max_tokens, max_chars
        tokenizer_path = Path(dataset.tokenizer_path)
        if tokenizer_path.is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
            self._decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
        else:
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
            self._decode = sp.decode            # control tokens (EOS, BOS) decode to ""

    def __call__(self, source: str, shard: str, doc: int) -> str:
        ids = self.dataset.document_tokens(source, shard, doc)
        text = " ".join(self._decode([int(t) for t in ids[:self.max_tokens]]).split())
        if len(text) > self.max_chars or len(ids) > self.max_tokens:
            text = text[:self.max_chars].rstrip() + "…"
        return text


# ---------------------------------------------------------------------------- plot

def plot(path: Path, rows: np.ndarray, spans: Spans, sources: list[str], src_of_doc: np.ndarray):
    """valuation.png: excluded fraction over training (token weighted, in at most 50 step bins;
    overall and per source) and the value distribution of the first vs the last quarter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = np.unique(rows["step"])
    n_bins = min(50, len(steps))
    edges = np.linspace(steps[0], steps[-1] + 1, n_bins + 1)
    span_bin = np.clip(np.searchsorted(edges, rows["step"][spans.row], side="right") - 1,
                       0, n_bins - 1)
    centers = (edges[:-1] + edges[1:]) / 2
    curves = [("all sources", np.ones(len(spans.row), bool))]
    if len(sources) <= 10:
        curves += [(name, src_of_doc[spans.doc] == s) for s, name in enumerate(sources)]
    for i, (name, sel) in enumerate(curves):
        st = group_stats(rows, spans.row[sel], span_bin[sel], spans.tokens[sel], n_bins)
        ok = st["tokens"] > 0
        ax1.plot(centers[ok], st["excluded_frac"][ok], marker=".", label=name,
                 **({"color": "k", "lw": 2.0} if i == 0 else {"lw": 1.0}))
    ax1.set(xlabel="step", ylabel="excluded fraction (token weighted)",
            title="Excluded before the optimizer step",
            ylim=(-0.02, 1.02))
    ax1.legend(fontsize=8)

    values = rows["value"][np.isfinite(rows["value"])]
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (-1.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, int(np.clip(2 * np.sqrt(values.size), 10, 80)))
    span = steps[-1] - steps[0] + 1
    for name, sel in (("early (first quarter)", rows["step"] < steps[0] + span / 4),
                      ("late (last quarter)", rows["step"] >= steps[-1] + 1 - span / 4)):
        v = rows["value"][sel]
        v = v[np.isfinite(v)]
        if v.size:
            ax2.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, histtype="step",
                     lw=1.5, label=f"{name}, n={v.size}")
    ax2.axvline(0.0, color="k", lw=0.8, ls="--")
    ax2.set(xlabel="LAI value (clipped to 0.5-99.5 percentile)", ylabel="density",
            title="Value distribution")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- report

def _clean(x):
    """JSON-safe number (NaN -> None)."""
    x = float(x)
    return None if not math.isfinite(x) else x


def build_report(run_dir: str | Path, *, top: int = 10, min_tokens: int = 16) -> dict:
    """Compute the valuation of a run and write RUN/report/*; returns the report.json dict."""
    run_dir = Path(run_dir)
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
    spans = locate_all(rows, dataset)

    sources = sorted({k[0] for k in spans.docs})
    src_of_doc = np.array([sources.index(k[0]) for k in spans.docs], dtype=np.int64)
    per_src = group_stats(rows, spans.row, src_of_doc[spans.doc], spans.tokens, len(sources))
    per_doc = group_stats(rows, spans.row, spans.doc, spans.tokens, len(spans.docs))

    snippet = Snippets(dataset)

    def doc_entry(i: int, with_text: bool) -> dict:
        source, shard, doc = spans.docs[i]
        e = {"source": source, "shard": shard, "doc": doc,
             **{k: (int(v[i]) if k in ("sequences", "tokens") else _clean(v[i]))
                for k, v in per_doc.items()}}
        if with_text:
            e["snippet"] = snippet(source, shard, doc)
        return e

    order = np.lexsort((np.arange(len(spans.docs)), per_doc["mean_value"]))   # ascending, stable
    rankable = (per_doc["tokens"] >= min_tokens) & np.isfinite(per_doc["mean_value"])
    ranked = [int(i) for i in order if rankable[i]]
    steps = np.unique(rows["step"])
    report = {
        "run_dir": str(run_dir),
        "sequences": int(rows.size),
        "steps": {"count": int(steps.size), "first": int(steps[0]), "last": int(steps[-1])},
        "excluded_frac": float((~rows["kept"]).mean()),
        "mean_value": _clean(np.nanmean(rows["value"])) if np.isfinite(rows["value"]).any()
        else None,
        "mean_loss": _clean(rows["loss"].astype(np.float64).mean()),
        "sources": [{"source": name, **{k: (int(v[s]) if k in ("sequences", "tokens")
                                           else _clean(v[s])) for k, v in per_src.items()}}
                    for s, name in enumerate(sources)],
        "documents": {
            "count": len(spans.docs), "ranked": len(ranked), "min_tokens": min_tokens,
            "most_valuable": [doc_entry(i, True) for i in ranked[::-1][:top]],
            "least_valuable": [doc_entry(i, True) for i in ranked[:top]],
        },
    }

    out = run_dir / "report"
    atomic_write_json(out / "report.json", report)
    buf = io.StringIO()
    fields = ["source", "shard", "doc", "sequences", "tokens", "mean_value", "excluded_frac",
              "mean_loss"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(doc_entry(int(i), False) for i in order)
    with atomic_write(out / "documents.csv", "w") as f:
        f.write(buf.getvalue())
    plot(out / "valuation.png", rows, spans, sources, src_of_doc)
    with atomic_write(out / "report.md", "w") as f:
        f.write(markdown(report))
    return report


def _md(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|")


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def markdown(r: dict) -> str:
    lines = [
        f"# Data valuation of `{r['run_dir']}`", "",
        f"{r['sequences']} sequences over {r['steps']['count']} steps "
        f"({r['steps']['first']}..{r['steps']['last']}); "
        f"{r['excluded_frac']:.1%} excluded before the optimizer step; "
        f"mean LAI value {_md(r['mean_value'])}, mean loss {_md(r['mean_loss'])}.", "",
        "Values and exclusion are attributed to each document a sequence covers, weighted by its "
        "tokens in the sequence. All documents: `documents.csv` (least valuable first).", "",
        "![valuation](valuation.png)", "",
        "## Sources", "",
        "| source | sequences | tokens | mean value | excluded | mean loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in r["sources"]:
        lines.append(f"| {_md(s['source'])} | {s['sequences']} | {s['tokens']} | "
                     f"{_md(s['mean_value'])} | {_pct(s['excluded_frac'])} | {_md(s['mean_loss'])} |")
    d = r["documents"]
    for title, key in (("Most valuable documents", "most_valuable"),
                       ("Least valuable documents", "least_valuable")):
        lines += ["", f"## {title}", "",
                  f"Ranked among {d['ranked']} of {d['count']} documents with at least "
                  f"{d['min_tokens']} trained tokens.", "",
                  "| source | shard | doc | sequences | mean value | excluded | text |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for e in d[key]:
            lines.append(f"| {_md(e['source'])} | {_md(e['shard'])} | {e['doc']} | "
                         f"{e['sequences']} | {_md(e['mean_value'])} | "
                         f"{_pct(e['excluded_frac'])} | {_md(e['snippet'])} |")
    return "\n".join(lines) + "\n"


def summary(r: dict) -> str:
    best = max(r["sources"], key=lambda s: -math.inf if s["mean_value"] is None
               else s["mean_value"])
    return (f"report: {r['sequences']} sequences over {r['steps']['count']} steps, "
            f"{r['excluded_frac']:.1%} excluded; {len(r['sources'])} sources "
            f"(highest mean value: {best['source']}), {r['documents']['count']} documents "
            f"-> {Path(r['run_dir']) / 'report' / 'report.md'}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lai-report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="output directory of lai-train")
    p.add_argument("--top", type=int, default=10, help="documents listed at each end (10)")
    p.add_argument("--min-tokens", type=int, default=16,
                   help="rank only documents with at least this many trained tokens (16)")
    args = p.parse_args(argv)
    if args.top < 0 or args.min_tokens < 0:
        raise UserError("--top and --min-tokens must be >= 0")
    print(summary(build_report(args.run_dir, top=args.top, min_tokens=args.min_tokens)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

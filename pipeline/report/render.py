"""How a valuation is shown: valuation.png (exclusion over training, value distribution),
report.md, and the one-line summary."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.fsutil import atomic_write
from pipeline.report.stats import Spans, group_stats


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
        "tokens in the sequence. Documents are ranked by the value corrected for its step "
        f"(*step value*: {r['value_step_method']}; 0 = as good as the step's average, < 0 = "
        "worse than its batch mates), so that the order does not mean \"seen early\". "
        "*Measured*: how many of its sequences were valued. All documents: `documents.csv` "
        f"(least valuable first). Keep/drop list: `keep_drop.csv` ({_keep_drop(r['keep_drop'])}); "
        "`lai-prep --exclude keep_drop.csv` prepares the corpus without them.", "",
        "![valuation](valuation.png)", "",
        "## Sources", "",
        "| source | sequences | measured | tokens | step value | mean value | excluded | mean loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["sources"]:
        lines.append(f"| {_md(s['source'])} | {s['sequences']} | {s['measured']} | {s['tokens']} | "
                     f"{_md(s['value_step'])} | {_md(s['mean_value'])} | "
                     f"{_pct(s['excluded_frac'])} | {_md(s['mean_loss'])} |")
    lines += _mixture_lines(r.get("mixing"))
    d = r["documents"]
    for title, key in (("Most valuable documents", "most_valuable"),
                       ("Least valuable documents", "least_valuable")):
        lines += ["", f"## {title}", "",
                  f"Ranked among {d['ranked']} of {d['count']} documents with at least "
                  f"{d['min_tokens']} trained tokens.", "",
                  "| source | record | measured | step value | mean value | excluded | text |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for e in d[key]:
            where = e["record"] or f"{e['shard']} doc {e['doc']}"
            lines.append(f"| {_md(e['source'])} | {_md(where)} | {e['measured']} | "
                         f"{_md(e['value_step'])} | {_md(e['mean_value'])} | "
                         f"{_pct(e['excluded_frac'])} | {_md(e['snippet'])} |")
    return "\n".join(lines) + "\n"


def _keep_drop(k: dict) -> str:
    return (f"{k['dropped']} marked drop: the least valuable {k['drop_frac']:.0%} of the ranked "
            f"documents measured at least {k['min_measured']} times, if below their steps' "
            f"average; {k['too_few_measurements']} ranked documents measured fewer times are "
            "kept; *confidence*: the probability that a row's decision is right, from its "
            f"measurements and one measurement's spread ({k['measurement_sd']:.3g})")


def _mixture_lines(m: dict | None) -> list[str]:
    if m is None:
        return []
    lines = ["", "## Mixture (lai.mixing)", "",
             f"Sampling weights of the weighted data sources at the start and after "
             f"{m['updates']} updates (step {m['step']}), and the share of the trained sequences "
             "each source served (over the run; over its last quarter).", "",
             "| source | initial weight | final weight | served | served, last quarter |",
             "|---|---:|---:|---:|---:|"]
    for s in m["sources"]:
        lines.append(f"| {_md(s['source'])} | {_pct(s['initial'])} | {_pct(s['final'])} | "
                     f"{_pct(s['served'])} | {_pct(s['served_late'])} |")
    return lines


def summary(r: dict) -> str:
    best = max(r["sources"], key=lambda s: -math.inf if s["mean_value"] is None
               else s["mean_value"])
    mix = r.get("mixing")
    weights = "" if mix is None else "; mixture " + ", ".join(
        f"{s['source']} {s['initial']:.0%}->{s['final']:.0%}" for s in mix["sources"])
    return (f"report: {r['sequences']} sequences over {r['steps']['count']} steps, "
            f"{r['excluded_frac']:.1%} excluded; {len(r['sources'])} sources "
            f"(highest mean value: {best['source']}){weights}, {r['documents']['count']} documents, "
            f"{r['keep_drop']['dropped']} marked drop in keep_drop.csv "
            f"-> {Path(r['run_dir']) / 'report' / 'report.md'}")



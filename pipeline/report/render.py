"""How a valuation is shown: valuation.png (normalised value per source, mixture weights and
val loss per source over training), report.md, and the one-line summary."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.fsutil import atomic_write
from pipeline.report.stats import Spans, group_stats


# ---------------------------------------------------------------------------- plot

def plot(path: Path, rows: np.ndarray, spans: Spans, sources: list[str], src_of_doc: np.ndarray,
         corrected: np.ndarray, weights: dict, val: dict):
    """valuation.png, three panels over training: each source's mean step-corrected value
    (token weighted, in at most 50 step bins; comparable across steps, unlike raw values), the
    sampling weights (`weights`: {"names", "steps", "weights": [[per name] per step],
    "static"}) and the val loss of each source's val split and of the val mix (`val`:
    curves.val_curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    steps = np.unique(rows["step"])
    n_bins = min(50, len(steps))
    edges = np.linspace(steps[0], steps[-1] + 1, n_bins + 1)
    span_bin = np.clip(np.searchsorted(edges, rows["step"][spans.row], side="right") - 1,
                       0, n_bins - 1)
    centers = (edges[:-1] + edges[1:]) / 2
    for s, name in enumerate(sources[:10]):
        sel = src_of_doc[spans.doc] == s
        st = group_stats(rows, spans.row[sel], span_bin[sel], spans.tokens[sel], n_bins, corrected)
        ok = np.isfinite(st["value_step"])
        ax1.plot(centers[ok], st["value_step"][ok], marker=".", lw=1.0, label=name)
    ax1.axhline(0.0, color="k", lw=0.8, ls="--")
    ax1.set(xlabel="step", ylabel="mean step value (0 = the step's average)",
            title="Normalised LAI value per source")
    _legend(ax1)
    w = np.asarray(weights["weights"], dtype=np.float64).reshape(len(weights["steps"]), -1)
    for i, name in enumerate(weights["names"]):
        ax2.step(weights["steps"], w[:, i], where="post", lw=1.5, label=name)
    ax2.set(xlabel="step", ylabel="sampling weight", ylim=(-0.02, 1.02),
            title="Mixture weights" + (" (static)" if weights["static"] else " (lai.mixing)"))
    _legend(ax2)
    for name, curve in val["sources"].items():
        ax3.plot(curve["steps"], curve["loss"], marker=".", lw=1.0, label=name)
    if val["mix"] is not None:
        ax3.plot(val["mix"]["steps"], val["mix"]["loss"], color="k", ls="--", lw=1.5,
                 label="val mix")
    if val["mix"] is None and not val["sources"]:
        ax3.text(0.5, 0.5, "no val loss in RUN/tb\n(train.eval_every=0?)", ha="center",
                 va="center", transform=ax3.transAxes)
    ax3.set(xlabel="step", ylabel="val loss", title="Val loss per source")
    _legend(ax3)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


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
    lines += _val_lines(r.get("val") or {})
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


def _val_lines(val: dict) -> list[str]:
    curves = [("val mix", val.get("mix"))] + list((val.get("sources") or {}).items())
    curves = [(n, c) for n, c in curves if c and c["steps"]]
    if not curves:
        return []
    lines = ["", "## Val loss per source", "",
             "The val loss of each source's own val split (TensorBoard `val/<source>/loss`) "
             "and of the val mix (`val/loss`), at the run's first and last eval.", "",
             "| val set | first | last | change |", "|---|---:|---:|---:|"]
    for name, c in curves:
        lines.append(f"| {_md(name)} | {c['loss'][0]:.4f} (step {c['steps'][0]}) | "
                     f"{c['loss'][-1]:.4f} (step {c['steps'][-1]}) | "
                     f"{c['loss'][-1] - c['loss'][0]:+.4f} |")
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



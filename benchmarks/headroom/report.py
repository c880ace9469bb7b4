"""The report: one plot per scenario, its section, the summary table, docs/RESULTS.md."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.lib.docs import update_section
from benchmarks.lib.plots import plot_paired_curves
from benchmarks.lib.tables import md_table
from benchmarks.headroom.scenarios import Scenario
from benchmarks.headroom.variants import RATE_FROM


def plot(sc: Scenario, results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    refs = {"none": "k-", "ceiling": "k:", "oracle": "k--"}
    plot_paired_curves(ax, ax2, results,
                       lambda name: refs.get(name, "-" if name.startswith("lai") else "-."),
                       "validation loss (mean over seeds)", "minus `none` of the same seed")
    lo = min(min(r["val_loss"][-1] for r in by.values()) for by in results.values())
    ax.set_ylim(lo - 0.05, lo + 1.0)
    ax.set_title(sc.title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pm(mean: float, half: float) -> str:
    return "n/a" if mean != mean else f"{mean:+.3f}" + (f" ± {half:.3f}" if half == half else "")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


def scenario_section(sc: Scenario, info: dict, rows: list[dict], headroom: dict, rate: float,
                     size_name: str, grid: dict | None = None) -> str:
    h = headroom
    verdict = "counts" if h["counts"] else "does NOT count"
    none = next((r for r in rows if r["variant"] == "none"), {})
    L = [f"### {sc.name}: {sc.title}", "", sc.story, "",
         f"- data: {info['data']}; {none.get('docs_per_seq', float('nan')):.1f} documents per "
         "sequence (packed pieces, the `none` runs)",
         *([f"- this scenario's settings differ from the size's: {info['train']}"] if info["train"] else []),
         f"- harmful share of the trained tokens {_pct(none.get('harmful_tokens', float('nan')))} "
         f"({', '.join(sc.harmful) or 'nothing harmful'}); every filter "
         f"capped at {sc.cap} of each global batch; rate-matched baselines at `{RATE_FROM}`'s "
         f"measured exclusion rate {rate:.3f}",
         *_grid_lines(grid),
         *([f"- headroom: `{h.get('oracle', 'oracle')}` minus none {h['oracle_minus_none']:+.3f}, paired std "
            f"{h['std']:.3f} over {h['seeds']} seeds: {h['ratio']:.1f}x the noise, so the "
            f"scenario {verdict} (needs >= 4x, >= 3 seeds)",
            f"- AUROC of the per-sequence loss for the harmful sequences (the `none` runs): "
            f"{none.get('loss_auroc', float('nan')):.2f}"] if sc.harmful else
           ["- no headroom by construction (nothing harmful): every row should end within "
            "noise of `none`; `val <source>` = each source's own val loss"]),
         "", f"![{sc.name}](img/headroom_{sc.name}_{size_name}.png)", ""]
    srcs = [p for s in sc.weights for p in sc.parts_of(s)]
    vals = sorted({s for r in rows for s in r.get("val_by_source", {})}) if sc.val == "mix" else []
    header = ["variant", "final val loss", "minus none [95% CI]", "share of oracle gain",
              "reach none's final (share of steps)", "compute vs none", "tokens trained", "AUROC",
              "excluded", *[f"excl. {s}" for s in srcs], *[f"val {s}" for s in vals]]
    tab = []
    for r in rows:
        reach = "n/a" if r["reach_of"] == 0 else (
            f"{r['reach']:.0f} ({r['reached']}/{r['reach_of']}; {_pct(r['reach_share'])})"
            if r["reached"] else f"never (0/{r['reach_of']})")
        tab.append([r["variant"], f"{r['final']:.3f} ± {r['final_std']:.3f}", _pm(r["delta"], r["delta_ci"]),
                    _pct(r["share"]) if r["variant"] != "none" else "", reach,
                    "n/a" if r["compute"] != r["compute"] else f"{r['compute']:.2f}x",
                    f"{r['tokens_trained'] / 1e6:.2f}M",
                    "n/a" if r["auroc"] != r["auroc"] else f"{r['auroc']:.2f}", _pct(r["excluded"]),
                    *[_pct(r["excluded_by_source"].get(s, float("nan"))) for s in srcs],
                    *[f"{r['val_by_source'].get(s, float('nan')):.3f}" for s in vals]])
    L += [md_table(header, tab), ""]
    return "\n".join(L)


def _grid_lines(grid: dict | None) -> list[str]:
    """The static grid `static-tuned` picked from (first seed): each mixture and its val loss."""
    if not grid:
        return []
    cells = "; ".join(", ".join(f"{s} {w:.0%}" for s, w in m.items()) + f": {v:.3f}"
                      for m, v in grid["grid"])
    best = ", ".join(f"{s} {w:.0%}" for s, w in grid["weights"].items())
    return [f"- `static-tuned`: the best of {len(grid['grid'])} static mixtures on the first seed "
            f"({cells}) was {best}, then run on every seed"]


def summary_section(scen: list[Scenario], per: dict, size_name: str, meta: dict) -> str:
    names: list[str] = []
    for sc in scen:
        for r in per[sc.name]["rows"]:
            if r["variant"] not in names:
                names.append(r["variant"])
    header = ["variant"] + [f"{sc.name}{f' ({sc.length}x the steps)' if sc.length != 1 else ''}: "
                            "minus none [95% CI] / share of oracle gain" for sc in scen]
    tab = [["*headroom: oracle - none (x noise)*"]
           + [f"{per[sc.name]['headroom']['oracle_minus_none']:+.3f} "
              f"({per[sc.name]['headroom']['ratio']:.1f}x{'' if per[sc.name]['headroom']['counts'] else ', does not count'})"
              for sc in scen]]
    for n in names:
        cells = []
        for sc in scen:
            r = next((x for x in per[sc.name]["rows"] if x["variant"] == n), None)
            cells.append("" if r is None else (
                f"{_pm(r['delta'], r['delta_ci'])} / {_pct(r['share'])}" if n != "none"
                else f"{r['final']:.3f} (val loss)"))
        tab.append([n] + cells)
    return "\n".join([
        "## Summary: quality with headroom (`python -m benchmarks.headroom`)", "",
        "Final validation loss of each filter minus that of no filter (`none`) with the same seed "
        "(same init, same data order), mean over seeds with its 95% t-interval (negative = better), "
        "and the share of the oracle's gain it recovers: (none - method) / (none - oracle). "
        "`ceiling` trains the same steps on the clean / target data alone; `oracle` excludes exactly "
        "the harmful sequences of each batch under the same cap as every filter "
        "(`lai.filter.kind=oracle`); where documents are packed (`inside`, `packed`) the headroom and shares are "
        "read against `oracle-doc`, which masks exactly the harmful documents "
        f"(`lai.unit=document`). {meta['line']} Details, per-source exclusion and AUROC: "
        "[the scenario sections](#quality-with-headroom).", "",
        md_table(header, tab), ""])


def console(sc: Scenario, rows: list[dict], headroom: dict) -> str:
    """The scenario's headroom and rows as printed at the end of a run."""
    lines = [f"{sc.name}: {headroom.get('oracle', 'oracle')} - none "
             f"{headroom['oracle_minus_none']:+.4f} "
             f"(std {headroom['std']:.4f}, {headroom['ratio']:.1f}x noise)"]
    lines += [f"  {r['variant']:15s} val {r['final']:.4f}±{r['final_std']:.4f} "
              f"d {r['delta']:+.4f}±{r['delta_ci']:.4f} share {r['share']:+.2f} "
              f"excl {r['excluded']:.3f} AUROC {r['auroc']:.2f}" for r in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    from pipeline.fsutil import atomic_write_json
    atomic_write_json(path, json.loads(json.dumps(payload, default=str)))


def write_docs(docs: Path, size_name: str, scen: list[Scenario], payload: dict) -> None:
    """docs/results/headroom-<size>.json (without the per-run curves), one plot per scenario, and
    the `headroom-summary` and `headroom` sections of docs/RESULTS.md."""
    meta, size, per = payload["meta"], payload["size"], payload["scenarios"]
    write_json(docs / "results" / f"headroom-{size_name}.json",
               {**payload, "scenarios": {k: {kk: vv for kk, vv in v.items() if kk != "runs"}
                                         for k, v in per.items()}})
    for sc in scen:
        plot(sc, per[sc.name]["runs"], docs / "img" / f"headroom_{sc.name}_{size_name}.png")
    update_section(docs / "RESULTS.md", "headroom-summary", summary_section(scen, per, size_name, meta))
    seconds, wall, cpu = meta["seconds"], meta["run_wall_s"], meta["run_cpu_s"]
    body = ["## Quality with headroom", "",
            f"- command: `{meta['command']}`; this invocation {seconds / 60:.1f} min wall; "
            f"{meta['runs']} trainer runs: {wall / 60:.1f} min of run wall time and "
            f"{cpu / 60:.1f} CPU min in all (runs skipped as already done report their earlier "
            "times)",
            f"- {meta['line']}",
            "- AUROC: harmful sequences = positives, ranked by the filter's score (low value; "
            "loss-based: high loss), steps after the LAI warmup; `reach none's final` = first "
            "step (val every "
            f"{size['eval_every']}) at which the run's val loss is at or below the final val loss "
            "of `none` with the same seed, mean over the seeds that get there; `excl. <source>` = "
            "excluded fraction of that source's sequences after the LAI warmup",
            "- variants: `lai-filter` = LAI's z-score filter with everything else as the "
            "trainer ships it (the shipped default drops nothing: lai.filter.kind=none) (token_pair sketch, "
            "lai.score.reference=auto, which resolves to the validation set here: its reference "
            "batches come from the same val split the evaluation reads; z-scored values cut at "
            "-1; memory across epochs), under the scenario's cap; every other `lai-*` row "
            "changes one thing of it: `lai-global` the reference (the global batch itself), "
            "`lai-<pairing>` the method (exact) and pairing, `lai-raw` the policy (raw value "
            "<= 0 dropped, no memory), `lai-no-memory` no memory, `lai-adam` Adam-aware "
            "scoring; `lai-paper` = the paper's code: aligned, exact, self term, local "
            "reference (with one process per run the local batch is the global batch), raw "
            "value <= 0 dropped; `full-gradient` = the exact full-gradient inner product "
            "against the global batch, raw value <= 0 dropped; `mixing` = no exclusion, the "
            "sources' sampling weights follow their mean LAI value against the val set "
            "(lai.mixing); `mixing-avg` = the same, drawing with the time-average of the "
            "weights (lai.mixing.average); `bandit` = no LAI, the sources' weights follow an "
            "EXP3 bandit on each source's training loss (lai.mixing.kind=loss_bandit, as Online Data "
            "Mixing); `static-tuned` = the best static mixture of a small grid (first seed), "
            "then run on every seed; `loss@rate` / `random@rate` / `oracle@rate` = highest-loss / "
            f"random / harmful sequences excluded at `{RATE_FROM}`'s measured rate; `compute vs "
            "none` = mean CPU time of a run / none's (runs are single-process with "
            "OMP_NUM_THREADS=1, so CPU seconds are their cost even when other work shares the "
            "machine; wall time is not); "
            "`tokens trained` = target tokens of the sequences kept", ""]
    body += [scenario_section(sc, per[sc.name]["info"], per[sc.name]["rows"], per[sc.name]["headroom"],
                              per[sc.name]["rate"], size_name, per[sc.name].get("grid"))
             for sc in scen]
    update_section(docs / "RESULTS.md", "headroom", "\n".join(body))

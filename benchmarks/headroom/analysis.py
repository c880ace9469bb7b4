"""Metrics of one run (val curve, exclusion per source, AUROC) and of a scenario (rows paired with
`none` and `oracle` of the same seed; the headroom)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from benchmarks.lib import stats
from benchmarks.lib.tb import tb_scalars
from benchmarks.headroom.scenarios import Scenario
from pipeline.config.moved import migrate

ANALYSIS_VERSION = 3


def analyse_run(run_dir: Path, sc: Scenario, lai_warmup: int) -> dict:
    """Val curve (and each source's: `val/<source>/loss`), tokens trained, documents per
    sequence, the harmful share of the tokens, and from the ledger (steps after the LAI warmup):
    exclusion rate overall and per source, AUROC of the filter's score for the harmful sequences
    (a sequence is harmful when most of its tokens come from harmful documents; a document unit
    of lai.unit=document when its document is)."""
    from pipeline.report.valuation import build_dataset, load_data_spec
    from pipeline.format.ledger import read_ledger
    steps, val = tb_scalars(run_dir / "tb", "val/loss")
    rows = read_ledger(run_dir)
    ds = build_dataset(load_data_spec(run_dir))
    cfg = migrate(yaml.safe_load((run_dir / "config.yaml").read_text()))[0]   # runs of any layout
    seq_len = int(cfg["data"]["seq_len"])
    cache: dict[int, tuple[str, int, float]] = {}

    def seq(seq_id: int) -> tuple[str, int, float]:
        """(majority part, documents, harmful token share) of one sequence."""
        if seq_id not in cache:
            by: dict[str, int] = {}
            spans = ds.locate(seq_id)
            for sp in spans:
                by[sp.source] = by.get(sp.source, 0) + sp.num_tokens
            bad = sum(n for part, n in by.items() if part in sc.harmful)
            cache[seq_id] = max(by, key=by.get), len(spans), bad / max(sum(by.values()), 1)
        return cache[seq_id]

    def unit(seq_id: int, segment: int) -> tuple[str, int]:
        """(part, target tokens) of a ledger row: a sequence, or one document unit of it."""
        if segment < 0:
            return seq(seq_id)[0], seq_len
        return (ds.locate(seq_id)[segment].source,
                int((ds.target_runs(seq_id) == segment).sum()))

    units = [unit(int(i), int(k)) for i, k in zip(rows["seq_id"], rows["segment"])]
    trained = np.unique(rows[["step", "seq_id"]])["seq_id"]
    info = [seq(int(i)) for i in trained]
    after = rows["step"] > lai_warmup
    src = np.array([u[0] for u in units], dtype=object)[after]
    tokens = np.array([u[1] for u in units], dtype=np.int64)
    kept, value, loss = rows["kept"][after], rows["value"][after], rows["loss"][after]
    harmful = np.isin(src, sc.harmful)
    parts = [p for s in sc.weights for p in sc.parts_of(s)]
    out = {"val_steps": steps.tolist(), "val_loss": val.tolist(),
           "final_val_loss": float(val[-1]) if len(val) else float("nan"),
           "val_by_source": _final_by_source(run_dir, sc),
           "tokens_trained": int(tokens[rows["kept"]].sum()),
           "docs_per_seq": float(np.mean([x[1] for x in info])),
           "harmful_tokens": float(np.mean([x[2] for x in info])),
           "excluded": float((~kept).mean()) if len(kept) else float("nan"),
           "excluded_by_source": {s: float((~kept[src == s]).mean()) for s in parts
                                  if (src == s).any()},
           "precision": float(harmful[~kept].mean()) if (~kept).any() else float("nan"),
           "loss_auroc": stats.auroc(loss, harmful)}
    # the filter's score: low value = harmful (LAI, full gradient, oracle); loss-based: high loss
    if cfg["lai"]["filter"]["kind"] == "loss":
        out["auroc"] = out["loss_auroc"]
    else:
        finite = np.isfinite(value)
        out["auroc"] = stats.auroc(-value[finite], harmful[finite]) if finite.any() else float("nan")
    return out


def _final_by_source(run_dir: Path, sc: Scenario) -> dict[str, float]:
    """The last `val/<source>/loss` of each prepared source the run evaluated."""
    out = {}
    for s in sc.prepared:
        _, v = tb_scalars(run_dir / "tb", f"val/{s}/loss")
        if len(v):
            out[s] = float(v[-1])
    return out


def cached_analysis(run_dir: Path, sc: Scenario, lai_warmup: int) -> dict:
    path = run_dir.parent / f"{run_dir.name}.analysis.json"
    key = {"version": ANALYSIS_VERSION, "harmful": list(sc.harmful), "lai_warmup": lai_warmup}
    if path.is_file():
        d = json.loads(path.read_text())
        if d.get("key") == key:
            return d["result"]
    result = analyse_run(run_dir, sc, lai_warmup)
    from pipeline.fsutil import atomic_write_json
    atomic_write_json(path, json.loads(json.dumps({"key": key, "result": result})))
    return result


def summarise(results: dict[str, dict[int, dict]], oracle_name: str = "oracle"
              ) -> tuple[list[dict], dict]:
    """Rows per variant (paired with `none` and the oracle `oracle_name` of the same seed) and
    the scenario's headroom: oracle - none (mean, std over seeds, ratio, counts)."""
    none, oracle = results.get("none", {}), results.get(oracle_name, {})
    d_oracle = stats.paired(oracle, none)
    gain, noise = stats.mean_std(d_oracle)
    headroom = {"oracle_minus_none": gain, "std": noise,
                "ratio": -gain / noise if noise and noise > 0 else float("inf") if gain < 0 else 0.0,
                "seeds": len(d_oracle), "oracle": oracle_name}
    headroom["counts"] = bool(headroom["ratio"] >= 4 and len(d_oracle) >= 3)
    return [_row(name, by_seed, none, gain) for name, by_seed in results.items()], headroom


def _mean(rs: list[dict], key: str) -> float:
    return stats.mean_std([r.get(key, float("nan")) for r in rs])[0]


def _row(name: str, by_seed: dict[int, dict], none: dict[int, dict], gain: float) -> dict:
    """One variant's row: final val loss, paired difference to `none` and share of the oracle's
    gain, reach (steps, and share of the run's steps, to reach none's final val loss of the same
    seed), compute (mean CPU seconds / none's), tokens trained, per-source val loss and
    exclusion, AUROC."""
    rs = list(by_seed.values())
    d = stats.paired(by_seed, none)
    dm, half = stats.ci95(d)
    paired = [k for k in by_seed if k in none]
    reach = [stats.steps_to_reach(by_seed[k]["val_steps"], by_seed[k]["val_loss"],
                                  none[k]["final_val_loss"]) for k in paired]
    row = {"variant": name, "seeds": len(rs),
           "final": stats.mean_std([r["final_val_loss"] for r in rs])[0],
           "final_std": stats.mean_std([r["final_val_loss"] for r in rs])[1],
           "delta": dm, "delta_ci": half, "delta_std": stats.mean_std(d)[1],
           "share": dm / gain if gain and gain == gain else float("nan"),
           "reach": stats.mean_std(reach)[0], "reached": sum(x == x for x in reach),
           "reach_of": len(reach),
           "reach_share": stats.mean_std([x / by_seed[k]["val_steps"][-1]
                                          for x, k in zip(reach, paired)])[0],
           "compute": _mean(rs, "cpu_s") / _mean(list(none.values()), "cpu_s")
           if none else float("nan")}
    for key in ("excluded", "auroc", "precision", "loss_auroc", "tokens_trained",
                "docs_per_seq", "harmful_tokens"):
        row[key] = _mean(rs, key)
    for key in ("val_by_source", "excluded_by_source"):
        names = sorted({s for r in rs for s in r.get(key, {})})
        row[key] = {s: stats.mean_std([r[key].get(s, float("nan")) for r in rs])[0] for s in names}
    return row

"""Metrics of one run (val curve, exclusion per source, AUROC) and of a scenario (rows paired with
`none` and `oracle` of the same seed; the headroom)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from benchmarks import common as C
from benchmarks.headroom.scenarios import Scenario

ANALYSIS_VERSION = 1


def analyse_run(run_dir: Path, sc: Scenario, lai_warmup: int) -> dict:
    """Val curve, and from the ledger (steps after the LAI warmup): exclusion rate overall and per
    source, AUROC of the filter's score for the harmful sequences."""
    from pipeline.report.valuation import build_dataset, load_data_spec
    from pipeline.train.ledger import read_ledger
    steps, val = C.tb_scalars(run_dir / "tb", "val/loss")
    rows = read_ledger(run_dir)
    ds = build_dataset(load_data_spec(run_dir))
    cache: dict[int, str] = {}

    def source(seq_id: int) -> str:
        if seq_id not in cache:
            by: dict[str, int] = {}
            for sp in ds.locate(seq_id):
                by[sp.source] = by.get(sp.source, 0) + sp.num_tokens
            cache[seq_id] = max(by, key=by.get)
        return cache[seq_id]

    after = rows["step"] > lai_warmup
    src = np.array([source(int(i)) for i in rows["seq_id"][after]], dtype=object)
    kept, value, loss = rows["kept"][after], rows["value"][after], rows["loss"][after]
    harmful = np.isin(src, sc.harmful)
    out = {"val_steps": steps.tolist(), "val_loss": val.tolist(),
           "final_val_loss": float(val[-1]) if len(val) else float("nan"),
           "excluded": float((~kept).mean()) if len(kept) else float("nan"),
           "excluded_by_source": {s: float((~kept[src == s]).mean()) for s in sc.weights
                                  if (src == s).any()},
           "precision": float(harmful[~kept].mean()) if (~kept).any() else float("nan"),
           "loss_auroc": C.auroc(loss, harmful)}
    # the filter's score: low value = harmful (LAI, full gradient, oracle); loss-based: high loss
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["lai"]
    if cfg["filter"] == "loss":
        out["auroc"] = out["loss_auroc"]
    else:
        finite = np.isfinite(value)
        out["auroc"] = C.auroc(-value[finite], harmful[finite]) if finite.any() else float("nan")
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


def summarise(results: dict[str, dict[int, dict]]) -> tuple[list[dict], dict]:
    """Rows per variant (paired with `none` and `oracle` of the same seed) and the scenario's
    headroom: oracle - none (mean, std over seeds, ratio, counts)."""
    none, oracle = results.get("none", {}), results.get("oracle", {})
    d_oracle = C.paired(oracle, none)
    gain, noise = C.mean_std(d_oracle)
    headroom = {"oracle_minus_none": gain, "std": noise,
                "ratio": -gain / noise if noise and noise > 0 else float("inf") if gain < 0 else 0.0,
                "seeds": len(d_oracle)}
    headroom["counts"] = bool(headroom["ratio"] >= 4 and len(d_oracle) >= 3)
    rows = []
    for name, by_seed in results.items():
        rs = list(by_seed.values())
        d = C.paired(by_seed, none)
        dm, half = C.ci95(d)
        reach = [C.steps_to_reach(by_seed[k]["val_steps"], by_seed[k]["val_loss"],
                                  none[k]["final_val_loss"]) for k in by_seed if k in none]
        row = {"variant": name, "seeds": len(rs),
               "final": C.mean_std([r["final_val_loss"] for r in rs])[0],
               "final_std": C.mean_std([r["final_val_loss"] for r in rs])[1],
               "delta": dm, "delta_ci": half, "delta_std": C.mean_std(d)[1],
               "share": dm / gain if gain and gain == gain else float("nan"),
               "reach": C.mean_std(reach)[0], "reached": sum(x == x for x in reach),
               "reach_of": len(reach)}
        for key in ("excluded", "auroc", "precision", "loss_auroc"):
            row[key] = C.mean_std([r[key] for r in rs])[0]
        sources = sorted({s for r in rs for s in r["excluded_by_source"]})
        row["excluded_by_source"] = {s: C.mean_std([r["excluded_by_source"].get(s, float("nan"))
                                                    for r in rs])[0] for s in sources}
        rows.append(row)
    return rows, headroom

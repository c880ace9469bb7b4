"""Source mixing (lai.mixing) on a domain-targeting mix: how close does steering the source weights
by LAI values get to training on the target alone?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.mixing --name domain --target facts \
        --source facts=DATA/facts:1.0 --source code=DATA/code:1.5 --source reference=DATA/reference:1.5

Each --source is a prepared directory (`lai-prep`; all with one tokenizer) and its initial
weight; the target's val split is the validation set (and the val reference LAI scores against).
Variants, each for every seed (same init and data order for a seed), through the real trainer
(`python -m pipeline.train`, one process, ZeRO 0):

  none      the static mix, no LAI
  ceiling   the target source alone, the same steps
  mixing    lai.mixing with its defaults (filter none, val reference: lai.score.reference=auto)
  --add NAME='dotted overrides'   more variants (e.g. other lai.mixing_* values)

Reported per variant: final target val loss (mean +- std over seeds), the paired difference to
`none` of the same seed with its 95% t-interval, the share of the ceiling's gain it recovers,
(none - x) / (none - ceiling), the fraction of the steps it needs to reach none's final val loss
(val every --eval-every steps), and for mixing runs the target's final sampling weight and its
share of the trained sequences. Writes OUT/mixing.json and, unless --no-doc, the `mixing-NAME`
section of docs/RESULTS.md, docs/results/mixing-NAME.json and docs/img/mixing_NAME.png. Finished
runs are reused.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.lib.docs import update_section
from benchmarks.lib.machine import machine, now
from benchmarks.lib.paths import OUT, ROOT
from benchmarks.lib.runs import run_train
from benchmarks.lib.stats import ci95, mean_std, paired, steps_to_reach
from benchmarks.lib.tables import md_table
from benchmarks.lib.tb import tb_scalars

SIZE = {"n_layer": 2, "hidden": 64, "n_head": 2, "seq_len": 64, "micro_batch": 16, "steps": 300,
        "lr": 5e-3, "min_lr": 2e-4, "warmup": 20, "lai_warmup": 20, "eval_batches": 8}
VARIANTS = {
    "none": ["lai.enabled=false", "lai.filter.kind=none"],
    "ceiling": ["lai.enabled=false", "lai.filter.kind=none", "data.sources=$target"],
    "mixing": ["lai.enabled=true", "lai.filter.kind=none", "lai.mixing.kind=value"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.mixing",
                                description=__doc__.split("\n")[0])
    p.add_argument("--name", default="domain", help="the scenario's name (docs section, files)")
    p.add_argument("--source", action="append", required=True, metavar="NAME=DIR:WEIGHT")
    p.add_argument("--target", required=True, help="the source whose val split is the goal")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="none,ceiling,mixing")
    p.add_argument("--add", action="append", default=[], metavar="NAME=OVERRIDES")
    p.add_argument("--steps", type=int, default=SIZE["steps"])
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="runs (default benchmarks/out/mixing/NAME)")
    p.add_argument("--no-doc", action="store_true", help="do not touch docs/")
    return p.parse_args(argv)


def sources(args) -> dict[str, tuple[Path, float]]:
    out = {}
    for spec in args.source:
        name, _, rest = spec.partition("=")
        path, _, weight = rest.rpartition(":")
        if not (name and path and weight) or not (Path(path) / "manifest.json").is_file():
            raise SystemExit(f"error: --source {spec!r}: expected NAME=PREPARED_DIR:WEIGHT")
        out[name] = (Path(path), float(weight))
    if args.target not in out:
        raise SystemExit(f"error: --target {args.target!r} is not one of the --source names")
    return out


def base_config(srcs: dict, target: str, steps: int, eval_every: int) -> dict:
    s = SIZE
    return {
        "run": {"seed": 0, "resume": "auto", "save_every": 0, "keep_checkpoints": 1},
        "data": {"sources": [{"path": str(d), "weight": w} for d, w in srcs.values()],
                 "val_sources": [{"path": str(srcs[target][0]), "weight": 1.0}],
                 "seq_len": s["seq_len"]},
        "model": {"family": "llama", "n_layer": s["n_layer"], "hidden": s["hidden"],
                  "n_head": s["n_head"], "tie_word_embeddings": True},
        "train": {"steps": steps, "micro_batch": s["micro_batch"], "grad_accum": 1,
                  "zero_stage": 0, "precision": "fp32", "lr": s["lr"], "min_lr": s["min_lr"],
                  "warmup_steps": s["warmup"], "eval_every": eval_every,
                  "eval_batches": s["eval_batches"]},
        "lai": {"warmup_steps": s["lai_warmup"]},
        "log": {"every": 10, "histogram_every": 0},
    }


def analyse(run_dir: Path, target_index: int) -> dict:
    steps, val = tb_scalars(run_dir / "tb", "val/loss")
    out = {"val_steps": steps.tolist(), "val_loss": val.tolist(), "final_val_loss": float(val[-1])}
    mix = run_dir / "mixing.json"
    if mix.is_file():
        from pipeline.report.valuation import build_dataset, load_data_spec
        from pipeline.format.ledger import read_ledger
        traj = json.loads(mix.read_text())
        src = build_dataset(load_data_spec(run_dir)).source_of(read_ledger(run_dir)["seq_id"])
        out.update(target_weight=traj["final"][target_index],
                   target_served=float((src == target_index).mean()),
                   weights=traj["weights"], weight_steps=traj["steps"])
    return out


def summarise(results: dict[str, dict[int, dict]], steps: int) -> list[dict]:
    none, ceiling = results["none"], results.get("ceiling", {})
    gain = mean_std(paired(ceiling, none))[0]
    rows = []
    for name, by_seed in results.items():
        seeds = [k for k in by_seed if k in none]
        d = paired(by_seed, none)
        reach = [steps_to_reach(by_seed[k]["val_steps"], by_seed[k]["val_loss"],
                                none[k]["final_val_loss"]) / steps for k in seeds]
        dm, half = ci95(d)
        final = mean_std([r["final_val_loss"] for r in by_seed.values()])
        rows.append({"variant": name, "seeds": len(by_seed), "final": final[0], "final_std": final[1],
                     "delta": dm, "delta_ci": half, "share": dm / gain if gain else float("nan"),
                     "reach": mean_std(reach)[0], "reach_max": float(np.nanmax(reach)) if
                     any(x == x for x in reach) else float("nan"),
                     "reached": sum(x == x for x in reach),
                     "target_weight": mean_std([r.get("target_weight", np.nan)
                                                for r in by_seed.values()])[0],
                     "target_served": mean_std([r.get("target_served", np.nan)
                                                for r in by_seed.values()])[0],
                     "paired": d})
    return rows


def plot(results: dict, path: Path, target: str, names: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for j, (name, by_seed) in enumerate(results.items()):
        rs = list(by_seed.values())
        n = min(len(r["val_loss"]) for r in rs)
        steps = np.asarray(rs[0]["val_steps"][:n])
        vals = np.asarray([r["val_loss"][:n] for r in rs])
        ax.plot(steps, vals.mean(0), color=f"C{j}", label=name)
        ax.fill_between(steps, vals.min(0), vals.max(0), color=f"C{j}", alpha=0.12)
        for i, r in enumerate(rs):
            if "weights" in r:
                ax2.plot(r["weight_steps"], np.asarray(r["weights"])[:, names.index(target)],
                         color=f"C{j}", alpha=0.7, label=name if i == 0 else None)
    ax.set(xlabel="step", ylabel=f"{target} val loss (mean over seeds, band min..max)")
    lo = min(min(r["val_loss"][-1] for r in by.values()) for by in results.values())
    ax.set_ylim(lo - 0.05, lo + 1.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set(xlabel="step", ylabel=f"{target} sampling weight (each seed)", ylim=(0, 1))
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def section(args, srcs, rows, meta) -> str:
    total = sum(w for _, w in srcs.values())
    mix = ", ".join(f"{n} {w / total:.0%}" for n, (_, w) in srcs.items())
    fmt = lambda m, h: "n/a" if m != m else f"{m:+.3f}" + (f" ± {h:.3f}" if h == h else "")  # noqa: E731
    pct = lambda x: "n/a" if x != x else f"{100 * x:.0f}%"  # noqa: E731
    tab = [[r["variant"], f"{r['final']:.3f} ± {r['final_std']:.3f}", fmt(r["delta"], r["delta_ci"]),
            " ".join(f"{x:+.3f}" for x in r["paired"]),
            pct(r["share"]) if r["variant"] != "none" else "",
            f"{pct(r['reach'])} (max {pct(r['reach_max'])}, {r['reached']}/{r['seeds']})"
            if r["reached"] else f"never (0/{r['seeds']})",
            pct(r["target_weight"]), pct(r["target_served"])] for r in rows]
    return "\n".join([
        f"## Source mixing: {args.name} (`python -m benchmarks.mixing`)", "",
        f"- command: `{meta['command']}`; {meta['runs']} trainer runs, {meta['run_s'] / 60:.1f} min "
        f"of run wall time; machine: {meta['machine']}; {meta['date']}",
        f"- training mix {mix} (initial weights); validation = held-out `{args.target}` "
        f"documents (also LAI's val reference); llama {SIZE['n_layer']} layers x "
        f"{SIZE['hidden']}, seq {SIZE['seq_len']}, global batch {SIZE['micro_batch']}, "
        f"{args.steps} steps, lr {SIZE['lr']} cosine, LAI warmup {SIZE['lai_warmup']}; seeds "
        f"{args.seeds}; val every {args.eval_every} steps",
        "- `share` = (none - variant) / (none - ceiling); `reach` = fraction of the steps the run "
        "needs to get to the final val loss of `none` with the same seed (mean, max over seeds; "
        "moonshot: <= 70%); `target weight` / `served` = the target's final sampling weight and "
        "its share of all trained sequences",
        "", f"![mixing](img/mixing_{args.name}.png)", "",
        md_table(["variant", "final val loss", "minus none [95% CI]", "paired, by seed",
                  "share of ceiling gain", "reach none's final", "target weight", "served"], tab),
        ""])


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    srcs = sources(args)
    names = list(srcs)
    variants = {**VARIANTS, **{n.strip(): shlex.split(ov) for n, _, ov in
                               (a.partition("=") for a in args.add)}}
    chosen = list(dict.fromkeys(["none", *args.variants.split(","),
                                 *(a.partition("=")[0].strip() for a in args.add)]))
    unknown = [n for n in chosen if n not in variants]
    if unknown:
        raise SystemExit(f"error: --variants: unknown {unknown} (choose from {', '.join(variants)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out = args.out or OUT / "mixing" / args.name
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(srcs, args.target, args.steps, args.eval_every),
                                     sort_keys=False))
    target = f"[{{path: '{srcs[args.target][0]}', weight: 1.0}}]"
    results: dict[str, dict[int, dict]] = {}
    run_s = []
    from tqdm import tqdm
    for name, seed in tqdm([(n, s) for n in chosen for s in seeds], desc="mixing runs", unit="run"):
        run_dir = args.out / name / f"seed{seed}"
        ov = [o.replace("$target", target) for o in variants[name]]
        run_s.append(run_train(config, run_dir, seed, ov, 1)["wall_s"])
        results.setdefault(name, {})[seed] = analyse(run_dir, names.index(args.target))
    rows = summarise(results, args.steps)
    for r in rows:
        print(f"{r['variant']:12s} val {r['final']:.4f}±{r['final_std']:.4f} d {r['delta']:+.4f}"
              f"±{r['delta_ci']:.4f} share {r['share']:+.2f} reach {r['reach']:.2f} "
              f"({r['reached']}/{r['seeds']}) target weight {r['target_weight']:.2f}")
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.mixing " + shlex.join(sys.argv[1:])
    meta = {"command": cmd, "runs": len(run_s), "run_s": float(np.nansum(run_s)),
            "machine": machine(), "date": now(), "seconds": time.perf_counter() - t0}
    from pipeline.fsutil import atomic_write_json
    atomic_write_json(args.out / "mixing.json", json.loads(json.dumps(
        {"meta": meta, "size": SIZE, "rows": rows, "runs": results}, default=float)))
    if not args.no_doc:
        docs = ROOT / "docs"
        plot(results, docs / "img" / f"mixing_{args.name}.png", args.target, names)
        atomic_write_json(docs / "results" / f"mixing-{args.name}.json", json.loads(json.dumps(
            {"meta": meta, "size": SIZE, "rows": rows}, default=float)))
        update_section(docs / "RESULTS.md", f"mixing-{args.name}", section(args, srcs, rows, meta))
    print(f"mixing: {len(run_s)} runs in {(time.perf_counter() - t0) / 60:.1f} min -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

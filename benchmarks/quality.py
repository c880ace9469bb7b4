"""Quality on a corrupted corpus: does LAI filtering buy clean validation loss, against baselines?

One command (deterministic seeds; resumable: finished runs are skipped):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.quality            # CPU size, ~2 ranks
    .venv/bin/python -m benchmarks.quality --size gpu --nproc 8         # larger, on a GPU node

Top to bottom:
1. the default corpus (python stdlib) through the real data prep (`python -m data_prep`);
2. `benchmarks.corrupt`: whole train documents holding 20% of the train tokens are corrupted
   (duplicate boilerplate: memorised, low loss; repeat: degenerate repetition; shuffle: lines out
   of order, near-clean loss; garbage: random tokens, high loss); validation stays clean;
3. the real trainer (`python -m pipeline.train`, DeepSpeed, 2 CPU ranks over gloo via torchrun)
   for every variant x seed, the same model, steps and data order:
     none            no filter
     lai-default     LAI as shipped: default pairing, global reference, sketch
     lai-<pairing>   each pairing, global reference, exact (isolates the pairing)
     lai-paper       aligned, include_self, local reference, exact (the paper's code)
     lai-val         default pairing, clean validation cache as reference, sketch
     full-gradient   upper reference: the exact full-gradient inner product against the global
                     batch (lai.filter=full_gradient, LAI off so the ledger holds its values),
                     same policy as lai-default
     random@rate     random exclusion at lai-default's measured exclusion rate
     loss@rate       exclude the highest-loss sequences at the same rate (SPL-style)
     *-cap0.1, *@0.1 lai-default, lai-val, full-gradient, random and loss with at most 10% of
                     each batch excluded
4. from each run's TensorBoard (`val/loss`) and ledger (per-sequence values, keep decisions):
   final clean validation loss (mean +- std over seeds), steps to reach the unfiltered run's final
   loss, AUROC of the values for flagging corrupted sequences (a sequence is corrupted when most
   of its tokens come from a corrupted document), precision/recall of the excluded set, the
   exclusion rate over training;
5. writes docs/results/quality.json, docs/img/quality_*.png and the quality section of
   docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks import common as C

SIZES = {
    # 2 CPU ranks: ~1 min per run
    "cpu": {"vocab": 2048, "seq_len": 64, "n_layer": 2, "hidden": 64, "n_head": 2,
            "micro_batch": 8, "steps": 300, "lr": 2e-3, "warmup": 20, "eval_every": 25,
            "eval_batches": 8, "lai_warmup": 20, "max_docs": None},
    # a GPU node (8 ranks assumed by the batch): GPT-2-small-ish width, longer sequences
    "gpu": {"vocab": 8192, "seq_len": 256, "n_layer": 8, "hidden": 512, "n_head": 8,
            "micro_batch": 16, "steps": 3000, "lr": 6e-4, "warmup": 200, "eval_every": 100,
            "eval_batches": 16, "lai_warmup": 100, "max_docs": None},
}

PAIRINGS = ("token_pair", "aligned", "pooled")


def variants(default_pairing: str) -> dict[str, list[str]]:
    """name -> dotted overrides. random@rate / loss@rate get lai.baseline_rate added later."""
    v = {"none": ["lai.enabled=false", "lai.filter=none"],
         "lai-default": ["lai.filter=lai", "lai.method=sketch", "lai.reference=global",
                         "lai.pairing=default"]}
    for p in PAIRINGS:
        v[f"lai-{p}"] = ["lai.filter=lai", "lai.method=exact", "lai.reference=global", f"lai.pairing={p}"]
    v["lai-paper"] = ["lai.filter=lai", "lai.method=exact", "lai.reference=local",
                      "lai.pairing=aligned", "lai.include_self=true"]
    v["lai-val"] = ["lai.filter=lai", "lai.method=sketch", "lai.reference=val", "lai.pairing=default"]
    v["full-gradient"] = ["lai.enabled=false", "lai.filter=full_gradient"]
    v["random@rate"] = ["lai.enabled=false", "lai.filter=random"]
    v["loss@rate"] = ["lai.enabled=false", "lai.filter=loss"]
    # the same at a 10% exclusion cap: only the lowest-valued tenth of each global batch goes
    cap = "lai.max_exclude_frac=0.1"
    v["lai-default-cap0.1"] = v["lai-default"] + [cap]
    v["lai-val-cap0.1"] = v["lai-val"] + [cap]
    v["full-gradient-cap0.1"] = v["full-gradient"] + [cap]
    v["random@0.1"] = ["lai.enabled=false", "lai.filter=random", "lai.baseline_rate=0.1"]
    v["loss@0.1"] = ["lai.enabled=false", "lai.filter=loss", "lai.baseline_rate=0.1"]
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="all", help="comma list of variant names, or all")
    p.add_argument("--nproc", type=int, default=2, help="ranks per run (torchrun --nproc_per_node)")
    p.add_argument("--steps", type=int, default=None, help="override the size's step count")
    p.add_argument("--frac", type=float, default=0.2, help="fraction of train tokens corrupted")
    p.add_argument("--types", default=",".join(C.CORRUPTIONS))
    p.add_argument("--out", type=Path, default=C.OUT / "quality")
    p.add_argument("--data", type=Path, default=None, help="prepared clean corpus (default: stdlib prep)")
    p.add_argument("--no-doc", action="store_true", help="do not touch docs/")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- running


def base_config(size: dict, data_dir: Path) -> dict:
    return {
        "run": {"seed": 0, "resume": "auto", "save_every": 0, "keep_checkpoints": 1},
        "data": {"sources": [{"path": str(data_dir), "weight": 1.0}], "seq_len": size["seq_len"]},
        "model": {"family": "llama", "n_layer": size["n_layer"], "hidden": size["hidden"],
                  "n_head": size["n_head"], "tie_word_embeddings": True},
        "train": {"steps": size["steps"], "micro_batch": size["micro_batch"], "grad_accum": 1,
                  "zero_stage": 0, "precision": "fp32", "lr": size["lr"], "min_lr": size["lr"] / 10,
                  "warmup_steps": size["warmup"], "eval_every": size["eval_every"],
                  "eval_batches": size["eval_batches"]},
        "lai": {"warmup_steps": size["lai_warmup"], "max_exclude_frac": 0.5, "threshold": 0.0},
        "log": {"every": 10, "histogram_every": 0},
    }


# --------------------------------------------------------------------------- analysis


def sequence_labels(run_dir: Path, seq_ids: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted bool, kind str) per ledger row: corrupted = most tokens from corrupted docs."""
    from pipeline.report.valuation import build_dataset, load_data_spec
    ds = build_dataset(load_data_spec(run_dir))
    cache: dict[int, tuple[float, str]] = {}
    fr, kinds = np.empty(len(seq_ids)), np.empty(len(seq_ids), dtype=object)
    for i, s in enumerate(seq_ids.tolist()):
        if s not in cache:
            cache[s] = labels.of_spans(ds.locate(s))
        fr[i], kinds[i] = cache[s]
    return fr >= 0.5, kinds


def analyse_run(run_dir: Path, labels, lai_warmup: int) -> dict:
    from pipeline.train.ledger import read_ledger
    steps, val = C.tb_scalars(run_dir / "tb", "val/loss")
    rows = read_ledger(run_dir)
    bad, kinds = sequence_labels(run_dir, rows["seq_id"], labels)
    after = rows["step"] > lai_warmup
    v, kept, b, k = rows["value"][after], rows["kept"][after], bad[after], kinds[after]
    out = {"val_steps": steps.tolist(), "val_loss": val.tolist(),
           "final_val_loss": float(val[-1]) if len(val) else float("nan"),
           "drop_rate": float((~kept).mean()) if len(kept) else float("nan"),
           "corrupt_frac_seen": float(b.mean()) if len(b) else float("nan")}
    dropped = ~kept
    out["precision"] = float(b[dropped].mean()) if dropped.any() else float("nan")
    out["recall"] = float(dropped[b].mean()) if b.any() else float("nan")
    finite = np.isfinite(v)
    out["auroc"] = C.auroc(-v[finite], b[finite]) if finite.any() else float("nan")
    for kind in C.CORRUPTIONS:
        m = finite & ((k == kind) | ~b)
        out[f"auroc_{kind}"] = C.auroc(-v[m], b[m]) if m.any() else float("nan")
        sel = k == kind
        out[f"dropped_{kind}"] = float(dropped[sel].mean()) if sel.any() else float("nan")
    out["dropped_clean"] = float(dropped[~b].mean()) if (~b).any() else float("nan")
    # exclusion rate per step (over all steps, warmup included)
    st = rows["step"]
    u = np.unique(st)
    out["drop_curve"] = [u.tolist(), [float((~rows["kept"][st == s]).mean()) for s in u]]
    return out


# --------------------------------------------------------------------------- report


def summarise(results: dict, total_steps: int) -> list[dict]:
    """Per variant: final val loss (mean, std over seeds); paired with the unfiltered run of the same
    seed (same init, same data order): the final-loss difference and the fraction of the steps
    needed to reach that run's final loss (nan = never)."""
    none = results.get("none", {})
    rows = []
    for name, by_seed in results.items():
        rs = list(by_seed.values())
        m, s = C.mean_std([r["final_val_loss"] for r in rs])
        delta = C.mean_std(C.paired(by_seed, none))
        reach = [C.steps_to_reach(by_seed[k]["val_steps"], by_seed[k]["val_loss"],
                                  none[k]["final_val_loss"]) for k in by_seed if k in none]
        row = {"variant": name, "seeds": len(rs), "final": m, "final_std": s, "delta": delta[0],
               "delta_std": delta[1], "reach_frac": C.mean_std([x / total_steps for x in reach])[0],
               "reached": sum(x == x for x in reach)}
        for key in ("drop_rate", "auroc", "precision", "recall", "dropped_clean", "corrupt_frac_seen",
                    *(f"auroc_{k}" for k in C.CORRUPTIONS), *(f"dropped_{k}" for k in C.CORRUPTIONS)):
            row[key] = C.mean_std([r[key] for r in rs])[0]
        rows.append(row)
    return rows


def plots(results: dict, img_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    C.plot_paired_curves(ax, ax2, results, lambda name: "-" if name.startswith("lai") else "--",
                         "clean validation loss (mean over seeds, band = min..max)",
                         "minus the unfiltered run of the same seed", band=True)
    fig.tight_layout()
    fig.savefig(img_dir / "quality_val_loss.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, by_seed in results.items():
        r = list(by_seed.values())[0]
        s, d = np.asarray(r["drop_curve"][0]), np.asarray(r["drop_curve"][1])
        if len(s) and np.nanmax(d) > 0:
            k = max(1, len(s) // 30)
            ax.plot(s[::k], np.convolve(d, np.ones(k) / k, "same")[::k], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("excluded fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(img_dir / "quality_drop_rate.png", dpi=110)
    plt.close(fig)


def section(args, size, rows, truth, rate, seconds, run_seconds, default_pairing) -> str:
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.quality " + " ".join(sys.argv[1:])
    L = ["## Quality on a corrupted corpus", "",
         f"- command: `{cmd.strip()}`: {len(run_seconds)} trainer runs, {np.nansum(run_seconds) / 60:.1f} min "
         f"in all, median {np.nanmedian(run_seconds):.0f} s per run (RUN.time.json next to each run: wall "
         "and CPU seconds of the trainer process and its children); "
         f"this invocation {seconds / 60:.1f} min",
         f"- date: {C.now()}; machine: {C.machine()}; {args.nproc} ranks per run (torchrun, gloo, DeepSpeed ZeRO 0)",
         f"- corpus: python stdlib via `lai-prep` (vocab {size['vocab']}); corrupted with "
         f"`benchmarks.corrupt` (seed 0): {truth['token_fraction']:.1%} of train tokens in "
         f"{len(truth['docs'])} documents ({truth['doc_fraction']:.1%}), types {truth['counts']}; "
         "validation split clean",
         f"- model: llama {size['n_layer']} layers, hidden {size['hidden']}; seq {size['seq_len']}; "
         f"global batch {size['micro_batch']}x{args.nproc}; {args.steps or size['steps']} steps; lr {size['lr']} "
         f"cosine; LAI warmup {size['lai_warmup']} steps, threshold 0, max exclude 0.5; seeds {args.seeds}",
         f"- default pairing: `{default_pairing}`; baselines excluded at lai-default's measured rate "
         f"{rate:.3f}",
         "- a sequence counts as corrupted when most of its tokens come from a corrupted document; AUROC: "
         "corrupted = positive, flagged by low value, over all steps after the LAI warmup; precision / "
         "recall of the excluded set; `minus none (paired)` = final val loss minus that of the unfiltered run "
         "with the same seed (same init and data order); `reach` = fraction of the steps needed to get to "
         "the same-seed unfiltered run's final val loss (mean over the seeds that get there; `reached` = "
         f"how many do; val loss every {size['eval_every']} steps); sequences seen that are corrupted: "
         f"{rows[0]['corrupt_frac_seen']:.1%}",
         "", "![validation loss](img/quality_val_loss.png)", "",
         "Exclusion rate over training (seed 0, moving average):", "",
         "![exclusion rate](img/quality_drop_rate.png)", ""]
    header = (["variant", "seeds", "final val loss", "std", "minus none (paired)", "std", "reach",
               "reached", "excluded", "AUROC"]
              + [f"AUROC {k}" for k in C.CORRUPTIONS] + ["precision", "recall", "excl. clean"]
              + [f"excl. {k}" for k in C.CORRUPTIONS])
    tab = [[r["variant"], r["seeds"], r["final"], r["final_std"], r["delta"], r["delta_std"], r["reach_frac"],
            f"{r['reached']}/{r['seeds']}",
            r["drop_rate"], r["auroc"]]
           + [r[f"auroc_{k}"] for k in C.CORRUPTIONS] + [r["precision"], r["recall"], r["dropped_clean"]]
           + [r[f"dropped_{k}"] for k in C.CORRUPTIONS] for r in rows]
    L += [C.md_table(header, tab, "{:.3f}"), ""]
    return "\n".join(L)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    size = dict(SIZES[args.size])
    if args.steps:
        size["steps"] = args.steps
    seeds = [int(s) for s in args.seeds.split(",")]
    from benchmarks.corrupt import CorruptionLabels, corrupted_copy
    from pipeline.lai import DEFAULT_PAIRING

    clean = args.data or C.prepare_default_corpus(C.OUT / "data" / f"stdlib-v{size['vocab']}", size["vocab"])
    corrupt_dir = corrupted_copy(Path(clean), args.frac, tuple(t for t in args.types.split(",") if t))
    labels = CorruptionLabels(corrupt_dir)

    out = args.out / args.size
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(size, corrupt_dir), sort_keys=False))
    all_v = variants(DEFAULT_PAIRING)
    names = list(all_v) if args.variants == "all" else [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in all_v]
    if unknown:
        raise SystemExit(f"error: --variants: unknown {unknown} (choose from {', '.join(all_v)})")
    # lai-default first: the baselines run at its measured exclusion rate
    order = sorted(names, key=lambda n: (n not in ("lai-default", "none"), list(all_v).index(n)))
    results: dict[str, dict[int, dict]] = {}
    run_seconds: list[float] = []
    rate = float("nan")
    from tqdm import tqdm
    bar = tqdm(total=len(order) * len(seeds), desc="quality runs", unit="run")
    for name in order:
        ov = list(all_v[name])
        if name in ("random@rate", "loss@rate"):
            if "lai-default" not in results:
                raise SystemExit("error: --variants: random@rate / loss@rate need lai-default (its rate)")
            rate = float(np.mean([r["drop_rate"] for r in results["lai-default"].values()]))
            ov.append(f"lai.baseline_rate={min(rate, 0.95):.4f}")
        for seed in seeds:
            run_dir = out / name.replace("@", "-at-") / f"seed{seed}"
            run_seconds.append(C.run_train(config, run_dir, seed, ov, args.nproc)["wall_s"])
            results.setdefault(name, {})[seed] = analyse_run(run_dir, labels, size["lai_warmup"])
            r = results[name][seed]
            bar.set_postfix_str(f"{name} s{seed}: val {r['final_val_loss']:.3f} excl {r['drop_rate']:.2f} "
                                f"AUROC {r['auroc']:.2f}")
            bar.update()
        if name == "lai-default":
            rate = float(np.mean([r["drop_rate"] for r in results[name].values()]))
    bar.close()
    rows = summarise(results, size["steps"])
    seconds = time.perf_counter() - t0
    from pipeline.fsutil import atomic_write_json
    payload = {"size": size, "seeds": seeds, "rate": rate, "rows": rows, "runs": results,
               "truth": {k: v for k, v in labels.truth.items() if k != "docs"}, "date": C.now(),
               "machine": C.machine(), "seconds": seconds}
    atomic_write_json(out / "quality.json", json.loads(json.dumps(payload, default=str)))
    for r in rows:
        print(f"{r['variant']:14s} val {r['final']:.4f}+-{r['final_std']:.4f} reach {r['reach_frac']:.2f} "
              f"excl {r['drop_rate']:.3f} AUROC {r['auroc']:.3f} P {r['precision']:.2f} R {r['recall']:.2f}")
    if not args.no_doc:
        atomic_write_json(C.ROOT / "docs" / "results" / f"quality-{args.size}.json",
                          json.loads(json.dumps({k: v for k, v in payload.items() if k != "runs"}, default=str)))
        plots(results, C.ROOT / "docs" / "img")
        C.update_section(C.ROOT / "docs" / "RESULTS.md", "quality",
                         section(args, size, rows, labels.truth, rate, seconds, run_seconds, DEFAULT_PAIRING))
    print(f"quality: {len(order)} variants x {len(seeds)} seeds in {seconds / 60:.1f} min -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

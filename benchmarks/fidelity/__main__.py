"""`python -m benchmarks.fidelity`: the command (what it does: the package docstring)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.lib.corpus import prepare_default_corpus
from benchmarks.lib.corruption import CORRUPTIONS, Corruptor
from benchmarks.lib.docs import update_section
from benchmarks.lib.machine import machine, now
from benchmarks.lib.paths import OUT, ROOT
from benchmarks import fidelity
from benchmarks.fidelity.data import build_model, scored_batches, train_steps
from benchmarks.fidelity.recommend import recommend
from benchmarks.fidelity.report import adam_evidence_table, plot_sweep, results_section, write_doc
from benchmarks.fidelity.scoring import LOCAL_RANKS, PAIRINGS, evaluate_adam, evaluate_checkpoint, summarise
from benchmarks.fidelity.sweep import cost_table, sketch_sweep


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity",
                                description=fidelity.__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="prepared data dir (default: prepare stdlib into benchmarks/out/data/stdlib-v<vocab>)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="global batch = scored batch size")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--checkpoints", default="0,50,200,400", help="training steps at which to score")
    p.add_argument("--score-batches", type=int, default=6, help="scored batches per checkpoint")
    p.add_argument("--corrupt-frac", type=float, default=0.2)
    p.add_argument("--sketch-dims", default="1024,4096,16384,65536,262144,1048576")
    p.add_argument("--sketch-seeds", type=int, default=3)
    p.add_argument("--sketch-dim", type=int, default=None,
                   help="sketch size for the main tables (default: the library's default)")
    p.add_argument("--layer-set", default="linear", choices=("linear", "blocks", "head"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost-rounds", type=int, default=7, help="timing rounds (best of) in the cost table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "FIDELITY.md")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: checkpoints 0,20; 2 batches; 2 sketch sizes; no doc (prints tables)")
    a = p.parse_args(argv)
    if a.quick:
        a.checkpoints, a.score_batches, a.sketch_dims, a.sketch_seeds = "0,20", 2, "1024,16384", 1
    a.checkpoints = sorted({int(s) for s in a.checkpoints.split(",")})
    a.sketch_dims = [int(s) for s in a.sketch_dims.split(",")]
    if a.batch % LOCAL_RANKS:
        p.error(f"--batch must be a multiple of {LOCAL_RANKS} (local reference = a quarter)")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import pipeline.lai as lai
    from pipeline.data import PackedDataset

    data_dir = args.data or prepare_default_corpus(OUT / "data" / f"stdlib-v{args.vocab_size}", args.vocab_size)
    from benchmarks.corrupt import CorruptionLabels, corrupted_copy
    train_dir = corrupted_copy(data_dir, args.corrupt_frac)
    corpus_truth = CorruptionLabels(train_dir).truth
    train = PackedDataset([(train_dir, 1.0)], args.seq_len, split="train", seed=args.seed)
    clean = PackedDataset([(data_dir, 1.0)], args.seq_len, split="train", seed=args.seed)
    val = PackedDataset([(data_dir, 1.0)], args.seq_len, split="val", seed=args.seed)
    need = args.checkpoints[-1] * args.batch + args.score_batches * args.batch
    if train.samples_per_epoch < need:
        raise SystemExit(f"error: {data_dir}: {train.samples_per_epoch} train sequences, the benchmark needs {need}")
    sketch_dim = args.sketch_dim or getattr(lai, "DEFAULT_SKETCH_DIM", 4096)
    from pipeline.format.tokenizer import load_tokenizer
    corruptor = Corruptor(train.vocab_size, load_tokenizer(train.tokenizer.kind, train.tokenizer_path),
                          boilerplate=corpus_truth["boilerplate"]["tokens"])
    batches = scored_batches(clean, corruptor, args.score_batches, args.batch, args.corrupt_frac, args.seed + 1)
    val_x = torch.from_numpy(np.stack([val.sample(i) for i in range(args.batch)]).astype(np.int64))

    model = build_model(train.vocab_size, args.seq_len, args.hidden, args.layers, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    summaries, adam, losses_by_kind, train_losses = {}, {}, {}, {}
    kinds = [k for _, k in batches]
    allk = np.concatenate([np.asarray(k) for k in kinds])
    done = 0
    for ckpt in args.checkpoints:
        train_losses[ckpt] = train_steps(model, opt, train, done, ckpt, args.batch, args.lr)
        done = ckpt
        print(f"step {ckpt}: scoring", flush=True)
        res = evaluate_checkpoint(model, batches, val_x, args, sketch_dim)
        summaries[ckpt] = summarise(res, kinds)
        if ckpt > 0:                          # AdamW has moments from the first step on
            adam[ckpt] = summarise(evaluate_adam(model, opt, batches, val_x, args, sketch_dim, res), kinds)
        losses = np.concatenate(res["global"]["losses"])
        losses_by_kind[ckpt] = {k: float(losses[allk == k].mean()) for k in ("clean", *CORRUPTIONS)}
        s = summaries[ckpt]["global"]
        print("  global, no self: " + ", ".join(f"{p} r={s[f'{p} exact']['pearson']:.2f}" for p in PAIRINGS)
              + f"; loss by kind {losses_by_kind[ckpt]}", flush=True)
        if ckpt in adam:
            a = adam[ckpt]["global"]
            print("  vs preconditioned truth, global: " + ", ".join(
                f"{n} r={a[n]['pearson']:.2f}" for n in ("token_pair exact adam", "token_pair exact (plain)",
                                                        "per-layer ghost, rank-1 P", "full gradient (plain)")),
                  flush=True)
    print("sketch sweep", flush=True)
    sweep = sketch_sweep(model, batches, args)
    print("cost", flush=True)
    costs = cost_table(model, opt, batches[0][0], args, sketch_dim)
    rec = recommend(summaries, sweep, costs, args.checkpoints, sketch_dim, args.sketch_seeds * args.score_batches)
    seconds = time.perf_counter() - t_start
    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "summaries": {str(c): s for c, s in summaries.items()},
               "summaries_adam": {str(c): s for c, s in adam.items()}, "loss_by_kind": losses_by_kind,
               "sketch": {f"{p}/{d}": r for (p, d), r in sweep.items()},
               "cost": costs, "recommendation": rec, "seconds": seconds, "date": now(), "machine": machine()}
    if args.quick:
        print(json.dumps({"summaries": results["summaries"], "rec": rec, "cost": costs}, indent=1, default=str))
        print(adam_evidence_table(summaries, adam, rec["trained_ckpts"]))
    else:
        from pipeline.fsutil import atomic_write_json
        atomic_write_json(ROOT / "docs" / "results" / "fidelity.json", json.loads(json.dumps(results, default=str)))
        plot_sweep(sweep, args.sketch_dims, ROOT / "docs" / "img" / "fidelity_sketch.png")
        write_doc(args, summaries, adam, losses_by_kind, sweep, costs, rec, train_losses, seconds, data_dir,
                  sketch_dim, train_dir, corpus_truth)
        update_section(ROOT / "docs" / "RESULTS.md", "fidelity",
                       results_section(summaries, adam, rec, args.checkpoints))
    print(f"fidelity: pairing={rec['pairing']} include_self={rec['include_self']} "
          f"sketch_dim={rec['sketch_dim']} in {seconds / 60:.1f} min"
          + ("" if args.quick else f" -> {args.doc}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

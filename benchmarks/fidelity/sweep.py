"""Sketch agreement with exact values versus sketch size, and the cost per training step."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.lib.stats import mean_std, pearson
from benchmarks.lib.timing import lai_step_timings
from benchmarks.fidelity.scoring import PAIRINGS
from pipeline.lai import ScoreSettings


def sketch_sweep(model, batches, args) -> dict:
    """Pearson of sketched vs exact values (global reference, no self) per pairing and size, mean
    over batches and seeds; also vs the full gradient."""
    from pipeline.lai import full_gradient_values, lai_values
    out = {}
    for pairing in PAIRINGS:
        exact = [lai_values(model, x, pairing=pairing, layers=args.layer_set).numpy() for x, _ in batches]
        truth = [full_gradient_values(model, x).numpy() for x, _ in batches]
        for dim in tqdm(args.sketch_dims, desc=f"  sketch {pairing}", leave=False):
            pe, pt, ts = [], [], []
            for seed in range(args.sketch_seeds):
                for (x, _), e, t in zip(batches, exact, truth):
                    t0 = time.perf_counter()
                    v = lai_values(model, x, pairing=pairing, method="sketch", layers=args.layer_set,
                                   sketch_dim=dim, seed=seed).numpy()
                    ts.append(time.perf_counter() - t0)
                    pe.append(pearson(v, e))
                    pt.append(pearson(v, t))
            out[(pairing, dim)] = {"vs_exact": mean_std(pe), "vs_full": mean_std(pt),
                                   "seconds": float(np.median(ts))}
    return out


def cost_table(model, opt, x: torch.Tensor, args, sketch_dim) -> list[tuple[str, float, float]]:
    """Seconds per training step and ratio to the plain forward+backward of the same global batch,
    one process (LAI rows: capture + values + masked backward, as pipeline.train does; the Adam
    factors are read beforehand, as the trainer does every lai.score.precondition_every steps). The loss
    score costs nothing beyond the forward; the full gradient is timed as a standalone call."""
    from pipeline.lai import AdamFactors, LAIScorer, full_gradient_values

    def scorer(p, m, layers=args.layer_set, precondition="none"):
        s = ScoreSettings(pairing=p, method=m, layers=layers, reference="global",
                          sketch_dim=sketch_dim if m == "sketch" else None,
                          precondition=precondition)
        sc = LAIScorer(s.resolved(), args.seed)
        sc.factors = AdamFactors.from_optimizer(model, opt, layers) if precondition == "adam" else None
        return sc
    scorers = {f"LAI {p} {m}": scorer(p, m) for p in PAIRINGS for m in ("exact", "sketch")}
    scorers.update({f"LAI token_pair {m} adam": scorer("token_pair", m, precondition="adam")
                    for m in ("exact", "sketch")})
    scorers.update({f"LAI token_pair {m} head": scorer("token_pair", m, layers="head")
                    for m in ("exact", "sketch")})
    best = lai_step_timings(model, x, scorers, rounds=args.cost_rounds,
                            extra={"full-gradient inner product (torch.func)": lambda: full_gradient_values(model, x)})
    base = best.pop("plain")
    return [("plain forward+backward", base, 1.0)] + [(k, t, t / base) for k, t in best.items()]

"""LAI fidelity benchmark: how well each LAI variant tracks the exact full-gradient inner product.

One command (deterministic seeds):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fidelity          # writes docs/FIDELITY.md

What it does, top to bottom:
1. prepares the default corpus (python stdlib sources) with the real data prep (`lai-prep`,
   sentencepiece, small vocabulary) unless --data names a prepared directory;
2. trains a tiny Llama with a plain single-process AdamW loop on packed train sequences of the
   corrupted copy of that corpus (benchmarks.corrupt: whole documents holding 20% of the train
   tokens corrupted, the same copy the quality benchmark trains on), so that the model has learned
   the corruptions as it would in a real run (repeated text becomes low-loss);
3. at each checkpoint, scores fixed batches of held-back clean train sequences, 20% of which are
   freshly corrupted (repeat / shuffle / garbage, see benchmarks/common.py), with every LAI variant
   (pairing x exact/sketch x with/without self x reference global/local/val) and the loss score,
   and compares them with `full_gradient_values` under the same reference: Pearson, Spearman,
   keep/drop agreement (value > 0), AUROC for flagging corrupted sequences (low value = flagged);
   plus the LM head alone (`layers=head`: its exact ghost term) against the same truth;
4. Adam-aware scoring (`lai.precondition=adam`) at each trained checkpoint: the AdamW state of the
   training loop gives P = 1/(sqrt(v_hat)+eps); LAI with and without its rank-1 factors, the
   per-layer ghost with P and with its rank-1 fit, and the head alone, against the exact
   preconditioned full-gradient inner product <grad l_z, P (.) grad l_j>;
5. sketch agreement with exact versus sketch size; cost per step of each method as a ratio to the
   plain forward+backward of the same batch;
6. writes docs/FIDELITY.md (tables, machine, command, date, computed recommendation), the raw
   numbers to docs/results/fidelity.json and a plot to docs/img/fidelity_sketch.png.

Reference "global" = the whole scored batch (all ranks' micro-batches); "local" = a quarter of it
(one of 4 ranks), each quarter scored against itself; "val" = a held-out clean batch.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import common as C

PAIRINGS = ("token_pair", "aligned", "pooled")
REFERENCES = ("global", "local", "val")
LOCAL_RANKS = 4


@dataclass(frozen=True)
class Variant:
    pairing: str        # token_pair | aligned | pooled | ghost | loss
    method: str         # exact | sketch | -
    include_self: bool
    layers: str | None = None   # None: the benchmark's layer set; "head": the LM head alone

    @property
    def name(self) -> str:
        if self.pairing == "loss":
            return "loss (median - l_j)"
        if self.pairing == "ghost":
            return f"per-layer ghost (true output grads){' +self' if self.include_self else ''}"
        return (f"{self.pairing} {self.method}{' head' if self.layers == 'head' else ''}"
                f"{' +self' if self.include_self else ''}")


HEAD_VARIANTS = [Variant("token_pair", "exact", False, "head"),
                 Variant("token_pair", "sketch", False, "head"),
                 Variant("pooled", "exact", False, "head")]
TRUTH_ADAM = "preconditioned full gradient (the truth)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    p.add_argument("--doc", type=Path, default=C.ROOT / "docs" / "FIDELITY.md")
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


# --------------------------------------------------------------------------- model and data


def build_model(vocab: int, seq_len: int, hidden: int, layers: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=seq_len + 1, tie_word_embeddings=False,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg).float()


def scored_batches(ds, corruptor: C.Corruptor, n_batches: int, batch: int, frac: float, seed: int):
    """Fixed batches of train sequences from the end of the epoch (never trained on), with
    round(frac*batch) positions per batch corrupted, types round-robin. Returns a list of
    (x int64 [B, T+1], kinds list[str] with "clean" for clean positions)."""
    rng = np.random.default_rng(seed)
    out = []
    n_corrupt = int(round(frac * batch))
    for b in range(n_batches):
        ids = [ds.samples_per_epoch - 1 - (b * batch + i) for i in range(batch)]
        x = np.stack([ds.sample(i) for i in ids]).astype(np.int64)
        kinds = ["clean"] * batch
        for k, pos in enumerate(sorted(rng.choice(batch, size=n_corrupt, replace=False))):
            kind = C.CORRUPTIONS[(b * n_corrupt + k) % len(C.CORRUPTIONS)]
            x[pos] = corruptor(kind, x[pos], rng, offset=None)
            kinds[pos] = kind
        out.append((torch.from_numpy(x), kinds))
    return out


def train_steps(model, opt, ds, start: int, stop: int, batch: int, lr: float):
    """Plain AdamW loop over packed sequences; sample ids step*batch ... (deterministic)."""
    model.train()
    for step in range(start, stop):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        x = torch.from_numpy(np.stack([ds.sample(step * batch + i) for i in range(batch)]).astype(np.int64))
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return float(loss.detach()) if stop > start else float("nan")


# --------------------------------------------------------------------------- scoring


def per_sequence_losses(model, x: torch.Tensor) -> np.ndarray:
    from pipeline.lai import per_sequence_loss
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits
        return per_sequence_loss(logits, x[:, 1:]).double().numpy()


def score(model, x: torch.Tensor, ref: str, val_x: torch.Tensor, fn, **kw) -> np.ndarray:
    """fn = lai_values | full_gradient_values on x (HF labels = input_ids) under reference `ref`."""
    if ref == "global":
        return fn(model, x, **kw).numpy()
    if ref == "val":
        return fn(model, x, ref_input_ids=val_x, **kw).numpy()
    q = x.shape[0] // LOCAL_RANKS
    return np.concatenate([fn(model, x[r * q:(r + 1) * q], **kw).numpy() for r in range(LOCAL_RANKS)])


def loss_score(losses: np.ndarray, ref: str, val_losses: np.ndarray) -> np.ndarray:
    """Median reference loss minus l_j (common.median_minus_loss) under reference `ref`."""
    if ref == "global":
        return C.median_minus_loss(losses)
    if ref == "val":
        return C.median_minus_loss(losses, val_losses)
    q = len(losses) // LOCAL_RANKS
    return np.concatenate([C.median_minus_loss(losses[r * q:(r + 1) * q]) for r in range(LOCAL_RANKS)])


def variants_for(ref: str) -> list[Variant]:
    selfs = (False,) if ref == "val" else (False, True)   # j is never in a val reference
    vs = [Variant(p, m, s) for p in PAIRINGS for m in ("exact", "sketch") for s in selfs]
    ghost = [Variant("ghost", "exact", s) for s in selfs]
    return vs + HEAD_VARIANTS + ghost + [Variant("loss", "-", False)]


def lai_score(model, x, ref, val_x, v: Variant, args, sketch_dim, factors=None) -> np.ndarray:
    from pipeline.lai import lai_values
    return score(model, x, ref, val_x, lai_values, pairing=v.pairing, method=v.method,
                 layers=v.layers or args.layer_set, include_self=v.include_self,
                 sketch_dim=sketch_dim if v.method == "sketch" else None, seed=args.seed,
                 preconditioner=factors)


def evaluate_checkpoint(model, batches, val_x, args, sketch_dim) -> dict:
    """All variants' values and the full-gradient truth on every scored batch.
    Returns {ref: {"truth": {self: [arrays]}, variant.name: [arrays], "losses": [arrays]}}."""
    from pipeline.lai import full_gradient_values, ghost_values
    res: dict = {}
    val_losses = per_sequence_losses(model, val_x)
    for ref in REFERENCES:
        r = res.setdefault(ref, {"truth": {False: [], True: []}})
        for x, _ in tqdm(batches, desc=f"  {ref:6s}", leave=False):
            losses = per_sequence_losses(model, x)
            r.setdefault("losses", []).append(losses)
            for s in ((False,) if ref == "val" else (False, True)):
                r["truth"][s].append(score(model, x, ref, val_x, full_gradient_values, include_self=s))
            for v in variants_for(ref):
                if v.pairing == "loss":
                    vals = loss_score(losses, ref, val_losses)
                elif v.pairing == "ghost":
                    vals = score(model, x, ref, val_x, ghost_values, include_self=v.include_self)
                else:
                    vals = lai_score(model, x, ref, val_x, v, args, sketch_dim)
                r.setdefault(v.name, []).append(vals)
    return res


def evaluate_adam(model, opt, batches, val_x, args, sketch_dim, plain: dict) -> dict:
    """Adam-aware rows against the exact preconditioned full-gradient inner product (no self),
    in evaluate_checkpoint's layout; `plain`: its result for the same checkpoint (the plain LAI
    rows and the plain full gradient, read here against the preconditioned truth)."""
    from pipeline.lai import (AdamFactors, elementwise_preconditioner, full_gradient_values,
                              ghost_values)
    p = elementwise_preconditioner(model, opt)
    factors = AdamFactors.from_optimizer(model, opt, "linear")
    rank1 = {**p, **factors.dense(model)}
    res: dict = {}
    for ref in REFERENCES:
        base = plain[ref]
        r = res.setdefault(ref, {"truth": {False: [], True: []}, "losses": base["losses"],
                                 "full gradient (plain)": base["truth"][False]})
        for x, _ in tqdm(batches, desc=f"  adam {ref:6s}", leave=False):
            r["truth"][False].append(score(model, x, ref, val_x, full_gradient_values, precondition=p))
            for v in [Variant(pr, m, False) for pr in PAIRINGS for m in ("exact", "sketch")] + \
                    [h for h in HEAD_VARIANTS if h.pairing == "token_pair"]:
                r.setdefault(f"{v.name} adam", []).append(
                    lai_score(model, x, ref, val_x, v, args, sketch_dim, factors))
            r.setdefault("per-layer ghost, exact P", []).append(
                score(model, x, ref, val_x, ghost_values, precondition=p))
            r.setdefault("per-layer ghost, rank-1 P", []).append(
                score(model, x, ref, val_x, ghost_values, precondition=rank1))
        for pr in PAIRINGS:
            for m in ("exact", "sketch"):
                r[f"{pr} {m} (plain)"] = base[f"{pr} {m}"]
        r["token_pair exact head (plain)"] = base["token_pair exact head"]
    return res


def summarise(res: dict, kinds_per_batch: list[list[str]]) -> dict:
    """Per reference and variant: mean over batches of Pearson / Spearman / agreement vs the
    full-gradient truth of the same reference and self setting; drop rate; AUROC (corrupted
    positive, score = -value, values rank-normalised within each batch)."""
    kinds = np.concatenate([np.asarray(k) for k in kinds_per_batch])
    groups = np.concatenate([np.full(len(k), i) for i, k in enumerate(kinds_per_batch)])
    out: dict = {}
    for ref, r in res.items():
        rows = {}
        names = [k for k in r if k not in ("truth", "losses")] + ["full gradient", "full gradient +self"]
        for name in names:
            if name in ("full gradient", "full gradient +self"):     # the truth itself
                s = name.endswith("+self")
                if not r["truth"][s]:
                    continue
                vals_list, truth_list = r["truth"][s], r["truth"][s]
            else:
                s = name.endswith("+self")
                vals_list, truth_list = r[name], r["truth"][s]
            pv = [C.pearson(v, t) for v, t in zip(vals_list, truth_list)]
            sv = [C.spearman(v, t) for v, t in zip(vals_list, truth_list)]
            ag = [C.sign_agreement(v, t) for v, t in zip(vals_list, truth_list)]
            allv = np.concatenate(vals_list)
            flag = -C.within_group_percentile(allv, groups)
            row = {"pearson": C.mean_std(pv)[0], "spearman": C.mean_std(sv)[0], "agree": C.mean_std(ag)[0],
                   "drop": float((allv <= 0).mean()),
                   "auroc": C.auroc(flag, kinds != "clean")}
            for kind in C.CORRUPTIONS:
                m = (kinds == kind) | (kinds == "clean")
                row[f"auroc_{kind}"] = C.auroc(flag[m], kinds[m] == kind)
            rows[name] = row
        out[ref] = rows
    return out


# --------------------------------------------------------------------------- sketch size and cost


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
                    pe.append(C.pearson(v, e))
                    pt.append(C.pearson(v, t))
            out[(pairing, dim)] = {"vs_exact": C.mean_std(pe), "vs_full": C.mean_std(pt),
                                   "seconds": float(np.median(ts))}
    return out


def cost_table(model, opt, x: torch.Tensor, args, sketch_dim) -> list[tuple[str, float, float]]:
    """Seconds per training step and ratio to the plain forward+backward of the same global batch,
    one process (LAI rows: capture + values + masked backward, as pipeline.train does; the Adam
    factors are read beforehand, as the trainer does every lai.precondition_every steps). The loss
    score costs nothing beyond the forward; the full gradient is timed as a standalone call."""
    from pipeline.lai import AdamFactors, LAIScorer, full_gradient_values

    def scorer(p, m, layers=args.layer_set, precondition="none"):
        sc = LAIScorer(pairing=p, method=m, layers=layers, reference="global", include_self=False,
                       sketch_dim=sketch_dim if m == "sketch" else None, seed=args.seed,
                       precondition=precondition)
        sc.factors = AdamFactors.from_optimizer(model, opt, layers) if precondition == "adam" else None
        return sc
    scorers = {f"LAI {p} {m}": scorer(p, m) for p in PAIRINGS for m in ("exact", "sketch")}
    scorers.update({f"LAI token_pair {m} adam": scorer("token_pair", m, precondition="adam")
                    for m in ("exact", "sketch")})
    scorers.update({f"LAI token_pair {m} head": scorer("token_pair", m, layers="head")
                    for m in ("exact", "sketch")})
    best = C.lai_step_timings(model, x, scorers, rounds=args.cost_rounds,
                              extra={"full-gradient inner product (torch.func)": lambda: full_gradient_values(model, x)})
    base = best.pop("plain")
    return [("plain forward+backward", base, 1.0)] + [(k, t, t / base) for k, t in best.items()]


# --------------------------------------------------------------------------- recommendation and doc


def recommend(summaries: dict, sweep: dict, costs: list, ckpts: list[int], sketch_dim, n_sketch: int) -> dict:
    """Defaults from the tables. Fidelity of a pairing = mean over trained checkpoints of Spearman
    + Pearson with the full gradient (global reference, exact, no self). The recommended pairing
    is the cheapest (exact cost ratio) among those within 0.05 of the best fidelity; include_self
    only if it separates the corrupted sequences clearly better (AUROC + 0.02); the sketch size is
    the smallest tested one reaching Pearson 0.95 with exact of that pairing within one standard
    error (mean + std / sqrt(n_sketch) >= 0.95; n_sketch = seeds x batches behind each mean)."""
    trained = [c for c in ckpts if c > 0] or ckpts
    final = ckpts[-1]

    def avg(ref, name, key):
        return float(np.nanmean([summaries[c][ref][name][key] for c in trained]))
    fid = {p: avg("global", f"{p} exact", "spearman") for p in PAIRINGS}
    pearson = {p: avg("global", f"{p} exact", "pearson") for p in PAIRINGS}
    score = {p: fid[p] + pearson[p] for p in PAIRINGS}
    cost = {p: next(r for n, _, r in costs if n == f"LAI {p} exact") for p in PAIRINGS}
    best = max(PAIRINGS, key=score.get)
    close = [p for p in PAIRINGS if score[p] >= score[best] - 0.05]
    pairing = min(close, key=cost.get)
    au = {s: summaries[final]["global"][f"{pairing} exact{' +self' if s else ''}"]["auroc"] for s in (False, True)}
    include_self = bool(au[True] > au[False] + 0.02)
    se = math.sqrt(n_sketch)
    reach = {p: [d for (q, d), r in sorted(sweep.items())
                 if q == p and r["vs_exact"][0] + r["vs_exact"][1] / se >= 0.95] for p in PAIRINGS}
    return {"pairing": pairing, "best_fidelity": best, "close": close, "spearman": fid, "pearson": pearson,
            "exact_cost": cost, "include_self": include_self, "auroc_self": au,
            "sketch_dim": min(reach[pairing]) if reach[pairing] else None,
            "sketch_reach": {p: (min(v) if v else None) for p, v in reach.items()},
            "trained_ckpts": trained, "table_sketch_dim": sketch_dim}


ADAM_ROWS = [  # (table, row, what it is measured against)
    ("adam", "token_pair exact adam", "preconditioned"),
    ("adam", "token_pair sketch adam", "preconditioned"),
    ("adam", "token_pair exact (plain)", "preconditioned"),
    ("adam", "token_pair exact head adam", "preconditioned"),
    ("adam", "per-layer ghost, rank-1 P", "preconditioned"),
    ("adam", "per-layer ghost, exact P", "preconditioned"),
    ("adam", "full gradient (plain)", "preconditioned"),
    ("plain", "token_pair exact head", "plain"),
    ("plain", "token_pair sketch head", "plain"),
    ("plain", "token_pair exact", "plain"),
]


def adam_evidence(summaries: dict, adam: dict, trained: list[int]) -> list[list]:
    """Rows [name, truth, then Spearman / Pearson per reference, mean over trained checkpoints]."""
    rows = []
    for table, name, truth in ADAM_ROWS:
        src = adam if table == "adam" else summaries
        row = [name, truth]
        for ref in REFERENCES:
            for key in ("spearman", "pearson"):
                row.append(float(np.nanmean([src[c][ref][name][key] for c in trained])))
        rows.append(row)
    return rows


def adam_evidence_table(summaries: dict, adam: dict, trained: list[int]) -> str:
    header = ["variant", "truth"] + [f"{k} {r}" for r in REFERENCES for k in ("Spearman", "Pearson")]
    return C.md_table(header, adam_evidence(summaries, adam, trained), "{:.2f}")


def variant_table(summaries: dict, ref: str, ckpts: list[int], trained: list[int],
                  truth_label: str = "full gradient") -> str:
    """One reference's table: a row per variant (the truth's own rows, "full gradient [+self]"
    shown as `truth_label`: drop rate and AUROC only)."""
    final = ckpts[-1]
    header = (["variant"] + [f"Pearson @{c}" for c in ckpts] + [f"Spearman @{c}" for c in ckpts]
              + ["keep/drop agree (trained)", f"drop rate @{final}", f"AUROC corrupt @{final}"]
              + [f"AUROC {k} @{final}" for k in C.CORRUPTIONS])
    rows = []
    for name in summaries[final][ref]:
        truth = name in ("full gradient", "full gradient +self")
        row = [name.replace("full gradient", truth_label) if truth else name]
        row += [summaries[c][ref][name]["pearson"] if not truth else float("nan") for c in ckpts]
        row += [summaries[c][ref][name]["spearman"] if not truth else float("nan") for c in ckpts]
        row += [float(np.nanmean([summaries[c][ref][name]["agree"] for c in trained])) if not truth else float("nan"),
                summaries[final][ref][name]["drop"], summaries[final][ref][name]["auroc"]]
        row += [summaries[final][ref][name][f"auroc_{k}"] for k in C.CORRUPTIONS]
        rows.append(row)
    return C.md_table(header, rows, "{:.2f}")


def write_doc(args, summaries, adam, losses_by_kind, sweep, costs, rec, train_losses, seconds, data_dir,
              sketch_dim, train_dir, corpus_truth):
    ckpts = args.checkpoints
    trained = rec["trained_ckpts"]
    final = ckpts[-1]
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fidelity " + " ".join(sys.argv[1:])
    L = [
        "# LAI fidelity: LAI values vs the exact full-gradient inner product",
        "",
        "_Generated by `benchmarks/fidelity.py`; the section after the notes marker is hand-written "
        "and kept across re-runs._",
        "",
        f"- command: `{cmd.strip()}` ({seconds / 60:.1f} min)",
        f"- date: {C.now()}; machine: {C.machine()} (shared with other jobs while it ran)",
        f"- corpus: `{data_dir}` (python stdlib sources via `lai-prep`, sentencepiece vocab "
        f"{args.vocab_size}); sequences of {args.seq_len} tokens; trained on its corrupted copy "
        f"`{train_dir.name}` ({corpus_truth['token_fraction']:.1%} of train tokens in "
        f"{len(corpus_truth['docs'])} whole documents, {corpus_truth['counts']})",
        f"- model: Llama, {args.layers} layers, hidden {args.hidden}, untied head; AdamW lr {args.lr}, "
        f"batch {args.batch}, seed {args.seed}; train loss at the checkpoints: "
        + ", ".join(f"step {c}: {l:.2f}" for c, l in train_losses.items()),
        f"- scored: {args.score_batches} fixed batches of {args.batch} held-back clean train sequences (from the "
        "end of the epoch, never trained on) per "
        f"checkpoint, {int(round(args.corrupt_frac * args.batch))} per batch corrupted "
        "(" + "; ".join(f"**{k}**: {v}" for k, v in C.CORRUPTION_DOC.items()) + ")",
        f"- layer set `{args.layer_set}`; sketch size in the main tables: {sketch_dim}",
        "- truth: `full_gradient_values` with the same reference and self setting; keep/drop = value > 0; "
        "AUROC: corrupted = positive, flagged by low value (values rank-normalised within each batch)",
        "- reference **global** = the whole batch (all ranks); **local** = a quarter of it "
        f"({args.batch // LOCAL_RANKS} sequences, one of {LOCAL_RANKS} ranks) against itself; "
        "**val** = a held-out clean batch of the same size",
        "",
        "## Recommendation (computed from the tables below)",
        "",
        f"- **pairing: `{rec['pairing']}`** -- mean over trained checkpoints ({', '.join(map(str, trained))}) "
        "of Spearman / Pearson with the full gradient, global reference, exact, no self: "
        + "; ".join(f"{p} {rec['spearman'][p]:.2f} / {rec['pearson'][p]:.2f}" for p in PAIRINGS)
        + f". Best: {rec['best_fidelity']}; within 0.05 of it: {', '.join(rec['close'])}; cheapest of "
        "those (exact step-cost ratio: " + ", ".join(f"{p} {rec['exact_cost'][p]:.2f}x" for p in PAIRINGS) + ").",
        f"- **include_self: {rec['include_self']}** -- AUROC for flagging the corrupted sequences at step "
        f"{final} ({rec['pairing']} exact, global): without self {rec['auroc_self'][False]:.2f}, "
        f"with self {rec['auroc_self'][True]:.2f}.",
        (f"- **sketch size: {rec['sketch_dim']}** -- the smallest tested size whose values reach Pearson >= 0.95 "
         f"with exact {rec['pairing']} within one standard error (table below). Per pairing: "
         + ", ".join(f"{p} {d}" for p, d in rec["sketch_reach"].items()) + "." if rec["sketch_dim"] else
         f"- **sketch size: none of {args.sketch_dims} reaches Pearson 0.95 with exact {rec['pairing']}**; "
         "prefer `exact` where its cost is acceptable (see the cost table). Per pairing: "
         + ", ".join(f"{p} {d}" for p, d in rec["sketch_reach"].items()) + "."),
        "",
        f"Adam-aware scoring and the LM head alone, mean over trained checkpoints ({', '.join(map(str, trained))}) "
        "of Spearman / Pearson with the truth named (preconditioned = <grad l_z, P (.) grad l_j>, "
        "P = 1/(sqrt(v_hat)+eps) of the run's AdamW; plain = <grad l_z, grad l_j>), no self; tables below:",
        "",
        adam_evidence_table(summaries, adam, trained),
        "",
    ]
    for ref in REFERENCES:
        L += [f"## Reference: {ref}", "", variant_table(summaries, ref, ckpts, trained), ""]
    L += ["## Adam-aware scoring: against the exact preconditioned full-gradient inner product", "",
          "Truth: `full_gradient_values(precondition=P)`, <grad l_z, P (.) grad l_j> over all parameters, "
          "P = 1/(sqrt(v_hat)+eps) from the training loop's AdamW state at the checkpoint (no self). "
          "Rows: `adam` = LAI with `lai.precondition=adam` (the rank-1 factors of P per layer); `(plain)` "
          "= the same LAI rows as above, now read against the preconditioned truth; the per-layer ghost "
          "(true output gradients, linear layers only) with the exact P and with its rank-1 fit (what "
          "the fit alone costs); `full gradient (plain)` = how far the raw gradient inner product is from "
          "the preconditioned one. Step 0 has no moments.", ""]
    for ref in REFERENCES:
        L += [f"### Reference: {ref}", "", variant_table(adam, ref, trained, trained, TRUTH_ADAM), ""]
    L += ["## Per-sequence loss by corruption type (mean over scored sequences)", "",
          C.md_table(["step"] + ["clean", *C.CORRUPTIONS],
                     [[c] + [losses_by_kind[c][k] for k in ("clean", *C.CORRUPTIONS)] for c in ckpts], "{:.2f}"), ""]
    L += [f"## Sketch vs exact (global reference, no self, step {final}, {args.sketch_seeds} seeds)", "",
          "![sketch agreement](img/fidelity_sketch.png)", ""]
    rows = [[p, d, *sweep[(p, d)]["vs_exact"], sweep[(p, d)]["vs_full"][0], sweep[(p, d)]["seconds"] * 1e3]
            for p in PAIRINGS for d in args.sketch_dims]
    L += [C.md_table(["pairing", "sketch size", "Pearson vs exact", "(std over seeds x batches)",
                      "Pearson vs full gradient", "ms per call"], rows, "{:.3f}"), ""]
    L += [f"## Cost per training step (batch {args.batch} x {args.seq_len}, one process, step {final} weights)", "",
          "LAI rows time the training step with LAI in it (capture hooks + values + masked backward); "
          "ratio = that / plain forward+backward. The full gradient is a standalone call.", "",
          C.md_table(["method", "ms per step", "ratio to plain fwd+bwd"],
                     [[n, t * 1e3, r] for n, t, r in costs], "{:.2f}"), ""]
    doc = "\n".join(L) + "\n" + C.keep_notes(args.doc)
    from pipeline.fsutil import atomic_write
    with atomic_write(args.doc, "w") as f:
        f.write(doc)


def results_section(summaries, adam, rec, ckpts) -> str:
    """The fidelity summary folded into docs/RESULTS.md (full tables: docs/FIDELITY.md)."""
    rows = []
    for name in [f"{p} exact" for p in PAIRINGS] + [f"{p} sketch" for p in PAIRINGS] + [
            f"{rec['pairing']} exact +self", "token_pair exact head", "per-layer ghost (true output grads)",
            "loss (median - l_j)"]:
        rows.append([name] + [summaries[c]["global"][name]["spearman"] for c in ckpts]
                    + [summaries[ckpts[-1]]["global"][name]["auroc"]])
    return "\n".join([
        "## Fidelity (LAI vs the full-gradient inner product)", "",
        "Spearman with `full_gradient_values` (global reference, same self setting) at each training step, "
        "and AUROC for flagging corrupted sequences at the last step; all tables, the sketch-size sweep "
        "and the cost per step in [FIDELITY.md](FIDELITY.md).", "",
        C.md_table(["variant"] + [f"Spearman @{c}" for c in ckpts] + [f"AUROC @{ckpts[-1]}"], rows, "{:.2f}"), "",
        f"Defaults recommended by it: pairing `{rec['pairing']}`, include_self {rec['include_self']}, "
        f"sketch size {rec['sketch_dim'] or 'none reaches Pearson 0.95 with exact'}.", "",
        "Adam-aware scoring (`lai.precondition=adam`) and the LM head alone (`lai.layers=head`): mean over "
        "trained checkpoints of Spearman / Pearson with the truth named, no self:", "",
        adam_evidence_table(summaries, adam, rec["trained_ckpts"]), ""])


def plot_sweep(sweep, dims, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in PAIRINGS:
        m = [sweep[(p, d)]["vs_exact"][0] for d in dims]
        s = [sweep[(p, d)]["vs_exact"][1] for d in dims]
        ax.errorbar(dims, m, yerr=s, marker="o", label=p, capsize=3)
    ax.axhline(0.95, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sketch size")
    ax.set_ylabel("Pearson with exact")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import pipeline.lai as lai
    from pipeline.data import PackedDataset

    data_dir = args.data or C.prepare_default_corpus(C.OUT / "data" / f"stdlib-v{args.vocab_size}", args.vocab_size)
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
    corruptor = C.Corruptor(train.vocab_size, load_tokenizer(train.tokenizer.kind, train.tokenizer_path),
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
        losses_by_kind[ckpt] = {k: float(losses[allk == k].mean()) for k in ("clean", *C.CORRUPTIONS)}
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
               "cost": costs, "recommendation": rec, "seconds": seconds, "date": C.now(), "machine": C.machine()}
    if args.quick:
        print(json.dumps({"summaries": results["summaries"], "rec": rec, "cost": costs}, indent=1, default=str))
        print(adam_evidence_table(summaries, adam, rec["trained_ckpts"]))
    else:
        from pipeline.fsutil import atomic_write_json
        atomic_write_json(C.ROOT / "docs" / "results" / "fidelity.json", json.loads(json.dumps(results, default=str)))
        plot_sweep(sweep, args.sketch_dims, C.ROOT / "docs" / "img" / "fidelity_sketch.png")
        write_doc(args, summaries, adam, losses_by_kind, sweep, costs, rec, train_losses, seconds, data_dir,
                  sketch_dim, train_dir, corpus_truth)
        C.update_section(C.ROOT / "docs" / "RESULTS.md", "fidelity",
                         results_section(summaries, adam, rec, args.checkpoints))
    print(f"fidelity: pairing={rec['pairing']} include_self={rec['include_self']} "
          f"sketch_dim={rec['sketch_dim']} in {seconds / 60:.1f} min"
          + ("" if args.quick else f" -> {args.doc}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

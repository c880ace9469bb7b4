"""Every variant's values and the full-gradient truth on the scored batches, and their summary
(Pearson, Spearman, keep/drop agreement, drop rate, AUROC) per reference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.lib.corruption import CORRUPTIONS
from benchmarks.lib.stats import (auroc, mean_std, median_minus_loss, pearson, sign_agreement, spearman,
                                  within_group_percentile)

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
    """Median reference loss minus l_j (benchmarks.lib.stats.median_minus_loss) under reference `ref`."""
    if ref == "global":
        return median_minus_loss(losses)
    if ref == "val":
        return median_minus_loss(losses, val_losses)
    q = len(losses) // LOCAL_RANKS
    return np.concatenate([median_minus_loss(losses[r * q:(r + 1) * q]) for r in range(LOCAL_RANKS)])


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
            pv = [pearson(v, t) for v, t in zip(vals_list, truth_list)]
            sv = [spearman(v, t) for v, t in zip(vals_list, truth_list)]
            ag = [sign_agreement(v, t) for v, t in zip(vals_list, truth_list)]
            allv = np.concatenate(vals_list)
            flag = -within_group_percentile(allv, groups)
            row = {"pearson": mean_std(pv)[0], "spearman": mean_std(sv)[0], "agree": mean_std(ag)[0],
                   "drop": float((allv <= 0).mean()),
                   "auroc": auroc(flag, kinds != "clean")}
            for kind in CORRUPTIONS:
                m = (kinds == kind) | (kinds == "clean")
                row[f"auroc_{kind}"] = auroc(flag[m], kinds[m] == kind)
            rows[name] = row
        out[ref] = rows
    return out

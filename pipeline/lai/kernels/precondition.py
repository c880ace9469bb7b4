"""Adam-aware scoring (lai.score.precondition=adam): LAI values in the geometry of the AdamW step.

AdamW moves a weight W by -lr * (m_hat / (sqrt(v_hat) + eps) + wd * W), m_hat and v_hat the
bias-corrected moments (v_hat = exp_avg_sq / (1 - beta2^t), t = optimizer steps taken). Adding
sequence j to the batch adds (1 - beta1) grad l_j to m, so to first order (v and P held fixed)
the step on j changes the reference loss by -lr' <grad l_R, P (.) grad l_j>, with the elementwise
preconditioner

    P = 1 / (sqrt(v_hat) + eps)                                 (what AdamW divides by)

instead of the raw <grad l_R, grad l_j> that plain LAI approximates.

Rank-1 fit (Adafactor-style). For linear layer l, P_l in R^{o x d} (outputs x inputs, however
the weight is stored: GPT-2's Conv1D stores d x o) is replaced by

    P_l ~ r_l c_l^T = (P_l 1)(1^T P_l) / (1^T P_l 1),
    r_l = (P_l 1) / mean(P_l 1)     [o]  row weights over outputs, mean 1
    c_l = (1^T P_l) / o             [d]  column weights over inputs: the column means of P_l

the minimiser of the generalised KL divergence sum(P log(P / Q) - P + Q) over nonnegative
rank-1 matrices Q (the fit Adafactor applies to v; exact when P_l has rank 1). The split puts
the layer's scale in c_l, so r_l only says how the weight differs across outputs.

The ghost factorisation survives: with G^l_j = sum_t delta_jt (x) a_jt,

    <G^l_z, (r c^T) (.) G^l_j> = sum_{t,t'} <sqrt(r) delta_zt, sqrt(r) delta_jt'>
                                            <sqrt(c) a_zt, sqrt(c) a_jt'>,

a per-coordinate weight on each side: the layer input a^(l) gets sqrt(c_l); the output side
gets sqrt(r_l). LAI replaces every layer's output gradient delta^(l) by the logit gradient g,
which lives in the output space of the LM head alone, so the logit side gets sqrt(r_head). That
is exact for the head (up to the rank-1 fit); for every other layer it replaces r_l by r_head, an
approximation added to LAI's own (r has mean 1, so only the profile over outputs is replaced,
never the layer's scale, which c_l carries). Layers that read one input tensor (q/k/v,
gate/up) keep sharing it: sum_l <sqrt(c_l) a, sqrt(c_l) a'> = <sqrt(sum_l c_l) a, ...>
(capture.unique_inputs). Every pairing is then computed on the weighted features, exact or
sketched; bias terms are not part of LAI and get no weight.

Where the moments come from: a `Moments` reader (pipeline.train.moments under DeepSpeed, or
`optimizer_moments` for a plain torch optimizer) returns per weight the row and column sums of P
over its stored matrix, summed over ranks: ZeRO-partitioned moments are reduced to these
o + d numbers on the rank that holds them (`fragment_sums`), so no rank ever gathers v.
Before the first optimizer step there are no moments: values are plain LAI until the first
refresh that finds them (AdamPreconditioner.refresh returns False meanwhile).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .capture import effective_layers, hooked_modules, is_transposed

PRECONDITIONS = ("none", "adam")

# (name, weight) of every scored layer -> {name: (row sums [rows], column sums [cols])} of P over
# the weight as stored, summed over ranks; None before the first optimizer step. Collective.
Moments = Callable[[list[tuple[str, nn.Parameter]]], "dict[str, tuple[torch.Tensor, torch.Tensor]] | None"]


def inverse_root(v: torch.Tensor, bias_correction2: float, eps: float) -> torch.Tensor:
    """P = 1 / (sqrt(v / bias_correction2) + eps), as AdamW divides (fp32 or wider)."""
    v = v.float() if v.dtype not in (torch.float32, torch.float64) else v
    return (v.sqrt() / bias_correction2 ** 0.5 + eps).reciprocal()


def fragment_sums(p: torch.Tensor, start: int, rows: int, cols: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums [rows] and column sums [cols] (float64) of the elements of a rows x cols matrix
    whose row-major flat positions are start .. start + p.numel() - 1 (the values `p`): the part
    a ZeRO partition holds. Partial first and last rows, whole rows in between; one pass."""
    p = p.flatten()
    n = p.numel()
    if start < 0 or start + n > rows * cols:
        raise ValueError(f"fragment [{start}, {start + n}) outside a {rows} x {cols} matrix")
    row = torch.zeros(rows, dtype=torch.float64, device=p.device)
    col = torch.zeros(cols, dtype=torch.float64, device=p.device)
    r, c = divmod(start, cols)
    i = 0
    if c and n:                                    # the rest of a row begun elsewhere
        k = min(cols - c, n)
        row[r] += p[:k].sum(dtype=torch.float64)
        col[c:c + k] += p[:k].double()
        i, r = k, r + 1
    whole = (n - i) // cols
    if whole:
        block = p[i:i + whole * cols].view(whole, cols)
        row[r:r + whole] += block.sum(1, dtype=torch.float64)
        col += block.sum(0, dtype=torch.float64)
        i, r = i + whole * cols, r + whole
    if i < n:                                      # a row that continues elsewhere
        row[r] += p[i:].sum(dtype=torch.float64)
        col[:n - i] += p[i:].double()
    return row, col


def adam_hyper(optimizer: torch.optim.Optimizer) -> tuple[int, float, float]:
    """(t, beta2, eps) of an Adam-family optimizer: t = steps taken (the largest "step" in its
    state; 0 before the first), beta2 and eps of its parameter groups (which must agree)."""
    hyper = {(float(g["betas"][1]), float(g["eps"])) for g in optimizer.param_groups}
    if len(hyper) != 1:
        raise ValueError(f"lai.score.precondition=adam: the optimizer's parameter groups differ in "
                         f"(beta2, eps): {sorted(hyper)}")
    steps = [int(s["step"]) for s in optimizer.state.values() if "step" in s]
    return max(steps, default=0), *hyper.pop()


def bias_correction2(t: int, beta2: float) -> float:
    return 1.0 - beta2 ** t


def optimizer_moments(optimizer: torch.optim.Optimizer) -> Moments:
    """The Moments reader of a plain (not partitioned) torch Adam/AdamW whose state is keyed by
    the model's own parameters: one process, or every rank holding the whole state."""
    def read(weights):
        t, beta2, eps = adam_hyper(optimizer)
        if t == 0:
            return None
        out = {}
        for name, w in weights:
            v = optimizer.state.get(w, {}).get("exp_avg_sq")
            if v is None:
                raise ValueError(f"lai.score.precondition=adam: no Adam state for {name}")
            out[name] = fragment_sums(inverse_root(v, bias_correction2(t, beta2), eps), 0,
                                      *w.shape)
        return out
    return read


def scored_layers(model: nn.Module, layers: str) -> list[tuple[str, nn.Module]]:
    """(module name, module) of the linear layers whose inputs `layers` captures on `model`:
    the ones that need Adam factors. ValueError where there are none (the blocks set)."""
    eff = effective_layers(model, layers)
    if eff == "blocks":
        why = ("routes tokens to experts and is scored with layers=blocks"
               if layers != "blocks" else "is scored with layers=blocks")
        raise ValueError(f"lai.score.precondition=adam: {type(model).__name__} {why}, whose block "
                         "inputs feed several linear layers with their own Adam column weights; "
                         "use lai.score.layers=head (or linear on a dense model) or "
                         "lai.score.precondition=none")
    names = {m: n for n, m in model.named_modules()}
    return [(names[m], m) for m in hooked_modules(model, eff)]


@dataclass
class AdamFactors:
    """Rank-1 factors (r_l [o], c_l [d]) of P per scored layer (by module name), and the name of
    the LM head whose r weights the logit side."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    head: str

    @classmethod
    def from_sums(cls, layers: list[tuple[str, nn.Module]], sums: dict, head: str
                  ) -> AdamFactors:
        """From the row / column sums of P per stored weight (a Moments reader's answer)."""
        out = {}
        for name, m in layers:
            row, col = sums[name]
            if is_transposed(m):                   # stored inputs x outputs
                row, col = col, row
            o = row.numel()
            total = row.sum()
            out[name] = (row * (o / total), col / o)
        if head not in out:
            raise ValueError(f"lai.score.precondition=adam: the LM head {head!r} is not a scored layer")
        return cls(out, head)

    @classmethod
    def from_optimizer(cls, model: nn.Module, optimizer: torch.optim.Optimizer,
                       layers: str = "linear") -> AdamFactors | None:
        """The factors of `model`'s scored layers from a plain torch Adam/AdamW (None before its
        first step)."""
        return refresh_factors(model, layers, optimizer_moments(optimizer))

    def to(self, device) -> AdamFactors:
        return AdamFactors({k: (r.to(device), c.to(device)) for k, (r, c) in self.factors.items()},
                           self.head)

    def dense(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The rank-1 fit r c^T as a full matrix per scored weight, in the stored orientation,
        keyed by parameter name (for measuring the fit: reference.ghost_values(precondition=))."""
        modules = dict(model.named_modules())
        pnames = {id(p): n for n, p in model.named_parameters()}
        out = {}
        for name, (r, c) in self.factors.items():
            m = modules[name]
            full = torch.outer(r, c)
            out[pnames[id(m.weight)]] = full.T if is_transposed(m) else full
        return out

    def weights(self, model: nn.Module, modules: list[nn.Module]) -> InputWeights:
        """The feature weights of a capture of `modules` (in capture order) on `model`."""
        names = {m: n for n, m in model.named_modules()}
        cols = []
        for m in modules:
            name = names.get(m)
            f = self.factors.get(name) if name is not None else None
            if f is None:
                raise ValueError(f"lai.score.precondition=adam: no Adam factors for the captured layer "
                                 f"{names.get(m, type(m).__name__)!r}")
            cols.append(f[1])
        return InputWeights(cols, self.factors[self.head][0])

    def state_dict(self) -> dict:
        return {"head": self.head,
                "factors": {k: (r.cpu(), c.cpu()) for k, (r, c) in self.factors.items()}}

    @classmethod
    def from_state_dict(cls, d: dict) -> AdamFactors:
        return cls(dict(d["factors"]), d["head"])


@dataclass
class InputWeights:
    """Per-coordinate weights of the LAI features: captured input i scaled by sqrt(cols[i])
    ([d_i]; inputs read by several layers by sqrt of the sum), the logit gradient by sqrt(row)
    ([V], r of the LM head)."""
    cols: list[torch.Tensor]
    row: torch.Tensor

    def logit_side(self, dtype: torch.dtype, device) -> torch.Tensor:
        return self.row.to(device, dtype).sqrt()


def refresh_factors(model: nn.Module, layers: str, read: Moments) -> AdamFactors | None:
    """Read the moments of `model`'s scored layers and fit them (None: no moments yet)."""
    scored = scored_layers(model, layers)
    sums = read([(name, m.weight) for name, m in scored])
    if sums is None:
        return None
    names = {m: n for n, m in model.named_modules()}
    head = names[model.get_output_embeddings()]
    return AdamFactors.from_sums(scored, sums, head)


class AdamPreconditioner:
    """The factors in force and the step they were read at (a Selector member, checkpointed
    with it). Refreshed every `every` steps, and at every step until the first moments exist."""

    def __init__(self, every: int, layers: str):
        self.every, self.layers = every, layers
        self.factors: AdamFactors | None = None
        self.step: int | None = None

    def due(self, step: int) -> bool:
        return self.factors is None or self.step is None or step - self.step >= self.every

    def refresh(self, step: int, model: nn.Module, read: Moments) -> bool:
        """Collective when due (`read` is): new factors from the current moments; False when
        nothing changed (not due, or no moments yet). The factors are kept on the device of
        the model's LM head."""
        changed = False
        if self.due(step):
            factors = refresh_factors(model, self.layers, read)
            if factors is not None:
                self.factors, self.step, changed = factors, step, True
        if self.factors is not None:
            self.factors = self.factors.to(model.get_output_embeddings().weight.device)
        return changed

    def state_dict(self) -> dict:
        return {"layers": self.layers, "step": self.step,
                "factors": None if self.factors is None else self.factors.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        """Factors saved for another layer set are dropped (read again at the next step)."""
        if d.get("layers") != self.layers or d.get("factors") is None:
            self.factors, self.step = None, None
            return
        self.factors, self.step = AdamFactors.from_state_dict(d["factors"]), d["step"]


def elementwise_preconditioner(model: nn.Module, optimizer: torch.optim.Optimizer
                               ) -> dict[str, torch.Tensor]:
    """P = 1 / (sqrt(v_hat) + eps) for every trainable parameter of `model` (by name), from a
    plain torch Adam/AdamW: the exact preconditioner reference.full_gradient_values takes."""
    t, beta2, eps = adam_hyper(optimizer)
    if t == 0:
        raise ValueError("optimizer: no second moments yet (before the first optimizer step)")
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            v = optimizer.state.get(p, {}).get("exp_avg_sq")
            if v is None:
                raise ValueError(f"optimizer: no Adam state for parameter {name}")
            out[name] = inverse_root(v, bias_correction2(t, beta2), eps)
    return out

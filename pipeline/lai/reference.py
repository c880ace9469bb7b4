"""Reference scorers for evaluation (same sign convention as LAI: value > 0 = a step on j lowers
the reference loss); the baseline filters are in baselines.py.

  full_gradient_values: mean_z <grad l_z, grad l_j> over all trainable parameters, exact per-
      sample gradients via torch.func (functional_call + vmap(grad)); eval mode (dropout off).
      Memory B x P: meant for small models.
  ghost_values: the same inner product restricted to the linear layers' weights and biases,
      from captured inputs a and true output gradients delta (one backward of sum_j l_j,
      through torch.autograd.grad so .grad is untouched).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .api import check_ids
from .capture import hooked_modules
from .exact import reference_mean
from .grads import IGNORE, per_sequence_loss
from .modelio import eval_mode, model_logits


def _flat_values(q: torch.Tensor, r: torch.Tensor | None, include_self: bool) -> torch.Tensor:
    """Values from per-sequence flat gradients q [B, P] against r [B_r, P] (None: q itself)."""
    self_k = q.square().sum(1)
    if r is None:
        cross, n = q @ q.sum(0) - self_k, q.shape[0] - 1
    else:
        cross, n = q @ r.sum(0), r.shape[0]
    return reference_mean(cross, n, self_k, include_self)


def _per_sample_grads(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor
                      ) -> torch.Tensor:
    """[B, P] per-sequence gradients of l_j over the trainable parameters (named order)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model: no trainable parameter (requires_grad=False everywhere)")
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    n_valid = (targets != IGNORE).sum(1)

    def loss(p, ids, tgt, n):   # l_j of one sequence as a function of the parameters
        out = functional_call(model, {**p, **fixed}, args=(),
                              kwargs={"input_ids": ids.unsqueeze(0)})
        logits = out.logits[0]
        dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return F.cross_entropy(logits.to(dt), tgt, ignore_index=IGNORE, reduction="sum") / n

    grads = vmap(grad(loss), in_dims=(None, 0, 0, 0), chunk_size=8)(
        params, input_ids, targets, n_valid)
    return torch.cat([grads[n].flatten(1) for n in params], dim=1)


def full_gradient_values(model: nn.Module, input_ids: torch.Tensor,
                         labels: torch.Tensor | None = None, *,
                         ref_input_ids: torch.Tensor | None = None,
                         ref_labels: torch.Tensor | None = None,
                         include_self: bool = False) -> torch.Tensor:
    """float64 [B]: mean over the reference of <grad l_z, grad l_j> (all trainable params)."""
    input_ids, targets = check_ids(input_ids, labels)
    with eval_mode(model):
        q = _per_sample_grads(model, input_ids, targets)
        r = None
        if ref_input_ids is not None:
            r = _per_sample_grads(model, *check_ids(ref_input_ids, ref_labels, "ref_input_ids"))
        elif ref_labels is not None:
            raise ValueError("ref_labels given without ref_input_ids")
    return _flat_values(q.to(torch.float64), None if r is None else r.to(torch.float64),
                        include_self)


def _linear_layer_grads(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor
                        ) -> torch.Tensor:
    """[B, P_lin] per-sequence gradients of every linear layer's weight (and bias), each
    built as sum_t a_t (x) delta_t from one backward."""
    mods = hooked_modules(model, "linear")
    seen: dict[nn.Module, tuple] = {}
    handles = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, (i[0].detach(), o)))
               for m in mods]
    try:
        with torch.enable_grad():
            logits = model_logits(model, input_ids)
            outs = [seen[m][1] for m in mods]
            deltas = torch.autograd.grad(per_sequence_loss(logits, targets).sum(), outs,
                                         allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    flat = []
    for m, d in zip(mods, deltas):
        a = seen[m][0].to(torch.float64)
        d = torch.zeros_like(seen[m][1], dtype=torch.float64) if d is None else d.to(torch.float64)
        if getattr(m, "bias", None) is not None:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        flat.append(torch.einsum("btd,bto->bdo", a, d).flatten(1))
    return torch.cat(flat, dim=1)


def ghost_values(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                 *, ref_input_ids: torch.Tensor | None = None,
                 ref_labels: torch.Tensor | None = None, include_self: bool = False
                 ) -> torch.Tensor:
    """float64 [B]: per-layer ghost influence (true output gradients of every linear layer)."""
    input_ids, targets = check_ids(input_ids, labels)
    with eval_mode(model):
        q = _linear_layer_grads(model, input_ids, targets)
        r = None
        if ref_input_ids is not None:
            r = _linear_layer_grads(model, *check_ids(ref_input_ids, ref_labels,
                                                        "ref_input_ids"))
        elif ref_labels is not None:
            raise ValueError("ref_labels given without ref_input_ids")
    return _flat_values(q, r, include_self)

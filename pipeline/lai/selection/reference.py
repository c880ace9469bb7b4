"""Reference scorers for evaluation (same sign convention as LAI: value > 0 = a step on j lowers
the reference loss); the baseline filters are in baselines.py.

  full_gradient_values: mean_z <grad l_z, grad l_j> over all trainable parameters, exact per-
      sample gradients via torch.func (functional_call + vmap(grad)); eval mode (dropout off).
      Memory B x P: meant for small models.
  ghost_values: the same inner product restricted to the linear layers' weights and biases,
      from captured inputs a and true output gradients delta (one backward of sum_j l_j,
      through torch.autograd.grad so .grad is untouched).
Both take an optional elementwise `precondition` {parameter name: P, the parameter's shape}:
the inner product becomes <grad l_z, P (.) grad l_j> (Adam's step geometry with
P = 1/(sqrt(v_hat)+eps): precondition.elementwise_preconditioner; its rank-1 fit:
AdamFactors.dense).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..kernels.capture import hooked_modules, is_transposed
from ..kernels.exact import reference_mean
from ..kernels.grads import IGNORE, check_ids, per_sequence_loss
from ..kernels.modelio import eval_mode, model_logits


def _flat_values(q: torch.Tensor, r: torch.Tensor | None, include_self: bool,
                 root_p: torch.Tensor | None = None) -> torch.Tensor:
    """Values from per-sequence flat gradients q [B, P] against r [B_r, P] (None: q itself),
    in the metric diag(root_p^2) if given."""
    if root_p is not None:
        q = q * root_p
        r = None if r is None else r * root_p
    self_k = q.square().sum(1)
    if r is None:
        cross, n = q @ q.sum(0) - self_k, q.shape[0] - 1
    else:
        cross, n = q @ r.sum(0), r.shape[0]
    return reference_mean(cross, n, self_k, include_self)


def _root_p(names: list[str], shapes: list[torch.Size], precondition: dict | None
            ) -> torch.Tensor | None:
    """sqrt(P) flattened in the order of `names` (float64), or None."""
    if precondition is None:
        return None
    missing = [n for n in names if n not in precondition]
    if missing:
        raise ValueError(f"precondition: no entry for parameter {missing[0]}")
    for n, shape in zip(names, shapes):
        if precondition[n].shape != shape:
            raise ValueError(f"precondition[{n!r}]: shape {tuple(precondition[n].shape)}, the "
                             f"parameter has {tuple(shape)}")
    return torch.cat([precondition[n].detach().double().flatten() for n in names]).sqrt()


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _per_sample_grads(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor
                      ) -> torch.Tensor:
    """[B, P] per-sequence gradients of l_j over the trainable parameters (named order)."""
    params = _trainable(model)
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
                         include_self: bool = False,
                         precondition: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """float64 [B]: mean over the reference of <grad l_z, grad l_j> (all trainable params), or
    of <grad l_z, P (.) grad l_j> with `precondition` (an entry per trainable parameter)."""
    input_ids, targets = check_ids(input_ids, labels)
    params = _trainable(model)
    root_p = _root_p(list(params), [p.shape for p in params.values()], precondition)
    with eval_mode(model):
        q = _per_sample_grads(model, input_ids, targets)
        r = None
        if ref_input_ids is not None:
            r = _per_sample_grads(model, *check_ids(ref_input_ids, ref_labels, "ref_input_ids"))
        elif ref_labels is not None:
            raise ValueError("ref_labels given without ref_input_ids")
    return _flat_values(q.to(torch.float64), None if r is None else r.to(torch.float64),
                        include_self, root_p)


def _linear_params(model: nn.Module) -> tuple[list[nn.Module], list[str], list[torch.Size]]:
    """The linear layers, and the names and shapes of their weights (and biases) in the order
    _linear_layer_grads lays them out."""
    mods = hooked_modules(model, "linear")
    pnames = {id(p): n for n, p in model.named_parameters()}
    names, shapes = [], []
    for m in mods:
        for p in [m.weight] + ([m.bias] if getattr(m, "bias", None) is not None else []):
            names.append(pnames[id(p)])
            shapes.append(p.shape)
    return mods, names, shapes


def _linear_layer_grads(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor
                        ) -> torch.Tensor:
    """[B, P_lin] per-sequence gradients of every linear layer's weight (and bias), each
    built as sum_t a_t (x) delta_t from one backward (Conv1D's weight transposed: d x o, the
    stored layout)."""
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
        w = torch.einsum("btd,bto->bdo" if is_transposed(m) else "btd,bto->bod", a, d)
        flat.append(w.flatten(1))
        if getattr(m, "bias", None) is not None:
            flat.append(d.sum(1))
    return torch.cat(flat, dim=1)


def ghost_values(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                 *, ref_input_ids: torch.Tensor | None = None,
                 ref_labels: torch.Tensor | None = None, include_self: bool = False,
                 precondition: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """float64 [B]: per-layer ghost influence (true output gradients of every linear layer);
    `precondition`: an entry per linear weight and bias (as full_gradient_values)."""
    input_ids, targets = check_ids(input_ids, labels)
    _, names, shapes = _linear_params(model)
    root_p = _root_p(names, shapes, precondition)
    with eval_mode(model):
        q = _linear_layer_grads(model, input_ids, targets)
        r = None
        if ref_input_ids is not None:
            r = _linear_layer_grads(model, *check_ids(ref_input_ids, ref_labels,
                                                        "ref_input_ids"))
        elif ref_labels is not None:
            raise ValueError("ref_labels given without ref_input_ids")
    return _flat_values(q, r, include_self, root_p)

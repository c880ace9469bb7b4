"""Token cross-entropy chunked over the rows of the logits: no [B, T, V] float32 tensor.

    ce = token_cross_entropy(logits, targets)     # [B, T], differentiable w.r.t. logits

Forward, per chunk of rows (tokens): ce = -log_softmax(z)[y] in the compute dtype (fp32 for
bf16 / fp32 logits, float64 for float64), 0 at ignored targets (-100); nothing but the logits
(which the model holds anyway) is kept for the backward. Backward, per chunk: the softmax is
recomputed from the logits, d ce / d z = softmax - onehot(y), times the incoming gradient,
written straight in the logits' dtype. Extra memory: one chunk's temporaries
(sketch.CHUNK_ELEMENTS). Eager `F.cross_entropy(logits.float())` instead holds the fp32 copy, its
log-softmax and a dense fp32 gradient, each [B, T, V]. `compiled`: the chunk kernels through
torch.compile (sketch.Kernels; eager if compiling fails), which read each logit once per pass.

    ce = token_cross_entropy(logits, targets, vocab=request)      # also fills request.tokens

With a VocabRequest (sketch.py) the same pass over each chunk also folds the LAI sketch's
vocabulary side: C2 of the logit gradient (softmax - onehot) / N_j per token, from the
log-softmax the loss computes anyway, so LAI reads the logits no second time and computes no
second softmax. The gradient of ce is the same with or without it.
"""
from __future__ import annotations

import torch

from .sketch import Kernels, VocabRequest, chunk_rows, fold_minus_onehot, token_scale

IGNORE = -100               # target id of positions without a target


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise (bf16/fp16/fp32 accumulate in fp32)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def forward_kernel(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ce [r] of logits z [r, V] and targets y [r] (IGNORE: 0), in the compute dtype."""
    lsm = torch.log_softmax(z, dim=-1, dtype=compute_dtype(z))
    ce = -lsm.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(y != IGNORE, ce, torch.zeros_like(ce))


def forward_sketch_kernel(z: torch.Tensor, y: torch.Tensor, s: torch.Tensor, k: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """forward_kernel's ce [r] and, from the same log-softmax, the CountSketch of each row's
    softmax - onehot(y) with signs s [V] (weights folded in) into k buckets [r, k] (not yet
    scaled by 1 / N_j; IGNORE rows: the scale zeroes them)."""
    lsm = torch.log_softmax(z, dim=-1, dtype=compute_dtype(z))
    ce = -lsm.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    folded = fold_minus_onehot(lsm.exp_().mul_(s), y, s, k)
    return torch.where(y != IGNORE, ce, torch.zeros_like(ce)), folded


def backward_kernel(z: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g * (softmax(z) - onehot(y)) per row, 0 at ignored rows; [r, V] in z's dtype."""
    p = torch.softmax(z, dim=-1, dtype=compute_dtype(z))
    p.scatter_add_(-1, y.clamp_min(0).unsqueeze(-1), -torch.ones_like(p[:, :1]))
    w = torch.where(y != IGNORE, g.to(p.dtype), torch.zeros_like(g, dtype=p.dtype))
    return p.mul_(w.unsqueeze(-1)).to(z.dtype)


def _chunked(kernels: Kernels, fn, step: int, new_outs, rows: tuple, *extra):
    """fn(*chunk of rows, *extra) over chunks of `step` rows of `rows` (each [n, ...]), each
    output written into its buffer of `new_outs()` ([n, ...] each); a single chunk: fn's own
    outputs (no copy). fn returns one tensor or a tuple, and so does this."""
    n = rows[0].shape[0]
    if n <= step:
        return kernels(fn, *rows, *extra)
    outs = new_outs()
    for s in range(0, n, step):
        part = kernels(fn, *(r[s:s + step] for r in rows), *extra)
        for out, p in zip(outs, part if isinstance(part, tuple) else (part,)):
            out[s:s + step] = p
    return outs if isinstance(part, tuple) else outs[0]


class TokenCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy [B, T] of logits [B, T, V] (see the module doc); with `vocab` a
    VocabRequest, also the sketch's vocabulary side per token [B, T, k] (not differentiable;
    an empty tensor otherwise)."""

    @staticmethod
    def forward(ctx, logits, targets, compiled, vocab):
        z, y = logits.detach().flatten(0, 1), targets.flatten()
        kernels, step, dt = Kernels(compiled), chunk_rows(z.shape[-1], z.device), compute_dtype(z)
        ctx.save_for_backward(logits, targets)
        ctx.compiled = compiled
        if vocab is None:
            ce = _chunked(kernels, forward_kernel, step,
                          lambda: [z.new_empty(z.shape[0], dtype=dt)], (z, y))
            return ce.view(targets.shape), z.new_empty(0)
        ce, folded = _chunked(
            kernels, forward_sketch_kernel, step,
            lambda: [z.new_empty(z.shape[0], dtype=dt), z.new_empty(z.shape[0], vocab.k2,
                                                                   dtype=dt)],
            (z, y), vocab.signs(z.shape[-1], z.device, dt), vocab.k2)
        tokens = folded.view(*targets.shape, vocab.k2).mul_(token_scale(targets != IGNORE, dt))
        ctx.mark_non_differentiable(tokens)
        return ce.view(targets.shape), tokens

    @staticmethod
    def backward(ctx, grad, _tokens_grad):
        logits, targets = ctx.saved_tensors
        z, y, g = logits.detach().flatten(0, 1), targets.flatten(), grad.reshape(-1)
        out = _chunked(Kernels(ctx.compiled), backward_kernel, chunk_rows(z.shape[-1], z.device),
                       lambda: [torch.empty_like(z)], (z, y, g))
        return out.view(logits.shape), None, None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                        compiled: bool | None = None, vocab: VocabRequest | None = None
                        ) -> torch.Tensor:
    """ce [B, T] (compute dtype; 0 at IGNORE) of logits [B, T, V], targets [B, T] (ids checked
    by the caller); `compiled` None: on CUDA tensors. `vocab`: its `tokens` are filled with
    the sketch's vocabulary side of these logits (the module doc)."""
    ce, tokens = TokenCrossEntropy.apply(logits, targets, logits.is_cuda if compiled is None
                                         else compiled, vocab)
    if vocab is not None:
        vocab.tokens = tokens
    return ce

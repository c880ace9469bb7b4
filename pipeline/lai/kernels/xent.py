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
"""
from __future__ import annotations

import torch

from .sketch import Kernels, chunk_rows

IGNORE = -100               # target id of positions without a target


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise (bf16/fp16/fp32 accumulate in fp32)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def forward_kernel(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ce [r] of logits z [r, V] and targets y [r] (IGNORE: 0), in the compute dtype."""
    lsm = torch.log_softmax(z, dim=-1, dtype=compute_dtype(z))
    ce = -lsm.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(y != IGNORE, ce, torch.zeros_like(ce))


def backward_kernel(z: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g * (softmax(z) - onehot(y)) per row, 0 at ignored rows; [r, V] in z's dtype."""
    p = torch.softmax(z, dim=-1, dtype=compute_dtype(z))
    p.scatter_add_(-1, y.clamp_min(0).unsqueeze(-1), -torch.ones_like(p[:, :1]))
    w = torch.where(y != IGNORE, g.to(p.dtype), torch.zeros_like(g, dtype=p.dtype))
    return p.mul_(w.unsqueeze(-1)).to(z.dtype)


def _chunked(kernels: Kernels, fn, step: int, new_out, *rows: torch.Tensor) -> torch.Tensor:
    """fn over chunks of `step` rows of `rows` (each [n, ...]), written into `new_out()`
    [n, ...]; a single chunk: fn's own result (no copy)."""
    n = rows[0].shape[0]
    if n <= step:
        return kernels(fn, *rows)
    out = new_out()
    for s in range(0, n, step):
        out[s:s + step] = kernels(fn, *(r[s:s + step] for r in rows))
    return out


class TokenCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy [B, T] of logits [B, T, V] (see the module doc)."""

    @staticmethod
    def forward(ctx, logits, targets, compiled):
        z, y = logits.detach().flatten(0, 1), targets.flatten()
        ce = _chunked(Kernels(compiled), forward_kernel, chunk_rows(z.shape[-1], z.device),
                      lambda: z.new_empty(z.shape[0], dtype=compute_dtype(z)), z, y)
        ctx.save_for_backward(logits, targets)
        ctx.compiled = compiled
        return ce.view(targets.shape)

    @staticmethod
    def backward(ctx, grad):
        logits, targets = ctx.saved_tensors
        z, y, g = logits.detach().flatten(0, 1), targets.flatten(), grad.reshape(-1)
        out = _chunked(Kernels(ctx.compiled), backward_kernel, chunk_rows(z.shape[-1], z.device),
                       lambda: torch.empty_like(z), z, y, g)
        return out.view(logits.shape), None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                        compiled: bool | None = None) -> torch.Tensor:
    """ce [B, T] (compute dtype; 0 at IGNORE) of logits [B, T, V], targets [B, T] (ids checked
    by the caller); `compiled` None: on CUDA tensors."""
    return TokenCrossEntropy.apply(logits, targets, logits.is_cuda if compiled is None
                                   else compiled)

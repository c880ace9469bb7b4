"""Unbiased Kronecker CountSketch of the LAI features; communication independent of T and B.

Each pairing's kernel is an inner product of per-sequence tensors x_j (x) y_j:
  token_pair: Phi_j = sum_t a_jt (x) g_jt      aligned: vec(a_j) (x) vec(g_j)
  pooled:     abar_j (x) gbar_j
A CountSketch C1 (k1 buckets) of the layer-input side and an independent C2 (k2 buckets) of
the vocabulary side are unbiased for inner products and independent, so
token_pair: S_j = sum_t C1(a_jt) (x) C2(g_jt) (k1 * k2 values) has E<S_z, S_j> = K(z, j), and
the reference enters as one summed sketch per rank (all-reduce of k1 * k2 floats);
aligned / pooled: <C1 x_z, C1 x_j> <C2 y_z, C2 y_j> has expectation K(z, j) for z != j, and
the per-sequence sketches (k1 + k2 floats) are gathered. Coordinates are hashed by a
pairwise-independent family h(x) = ((alpha x + beta) mod p) mod k (p = 2^31 - 1) whose
parameters come from (seed, stream) only, so every rank and every batch shape agrees.
Layer l's coordinate i uses stream l; aligned also hashes the position t (bucket shift and sign
per position). Accumulation is fp32 (float64 for float64 models). Cost per token:
O(sum_l d_l + V) to hash plus k1 * k2 for token_pair's outer product.
"""
from __future__ import annotations

import math

import torch

from .capture import unique_inputs
from .features import Features
from .grads import _logit_grads, compute_dtype

PRIME = (1 << 31) - 1
BLOCK = 1 << 24


def split_dim(sketch_dim: int, pairing: str) -> tuple[int, int]:
    """(k1, k2) buckets of the input and vocabulary sides: token_pair k1 * k2 <= sketch_dim
    (k1 = floor(sqrt)); aligned / pooled k1 + k2 = sketch_dim."""
    if not isinstance(sketch_dim, int) or isinstance(sketch_dim, bool) or sketch_dim < 4:
        raise ValueError(f"sketch_dim: expected an int >= 4, got {sketch_dim!r}")
    if pairing == "token_pair":
        k1 = math.isqrt(sketch_dim)
        return k1, sketch_dim // k1
    return sketch_dim // 2, sketch_dim - sketch_dim // 2


def _params(seed: int, stream: int) -> list[int]:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + stream) % (1 << 62))
    return [int(v) for v in torch.randint(1, PRIME, (4,), generator=gen)]


def bucket_and_sign(n: int, k: int, seed: int, stream: int, device) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Hash of 0..n-1: bucket in [0, k) (int64 [n]) and sign +-1 (float32 [n])."""
    a1, b1, a2, b2 = _params(seed, stream)
    x = torch.arange(n, dtype=torch.int64, device=device)
    bucket = ((a1 * x + b1) % PRIME) % k
    sign = 1.0 - 2.0 * (((a2 * x + b2) % PRIME) % 2).to(torch.float32)
    return bucket, sign


STREAM_VOCAB, STREAM_POS_A, STREAM_POS_G = -1, -2, -3


def _count_sketch(x: torch.Tensor, k: int, seed: int, stream: int,
                  pos_stream: int | None = None) -> torch.Tensor:
    """CountSketch of the last dim, [..., n] -> [..., k]; with `pos_stream`, of the (position,
    coordinate) pairs of x [c, T, n] -> [c, k]: position t shifts the bucket by h(t) and flips
    the sign by s(t)."""
    bucket, sign = bucket_and_sign(x.shape[-1], k, seed, stream, x.device)
    if pos_stream is None:
        return x.new_zeros(*x.shape[:-1], k).index_add_(x.dim() - 1, bucket,
                                                         x * sign.to(x.dtype))
    c, t, n = x.shape
    shift, psign = bucket_and_sign(t, k, seed, pos_stream, x.device)
    idx = ((bucket.unsqueeze(0) + shift.unsqueeze(1)) % k).reshape(1, t * n).expand(c, -1)
    src = (x * (psign.unsqueeze(1) * sign.unsqueeze(0)).to(x.dtype)).reshape(c, t * n)
    return x.new_zeros(c, k).scatter_add_(1, idx, src)


def sketch_features(inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
                    valid: torch.Tensor, pairing: str, sketch_dim: int, seed: int
                    ) -> torch.Tensor | Features:
    """token_pair: per-sequence Kronecker sketches [B, k1 * k2] (summed over the reference);
    aligned / pooled: Features(a=[B, k1], g=[B, k2]), the two sides sketched separately
    (their kernel is a product of two Grams, so the reference must be gathered, B x
    sketch_dim floats; a Kronecker sketch would have the variance of only min(k1, k2) buckets).
    Inputs are validated by the caller; sequences go in chunks (no extra full [B, T, V])."""
    k1, k2 = split_dim(sketch_dim, pairing)
    dt = compute_dtype(logits)
    uniq = unique_inputs(inputs)
    b, t, v = logits.shape
    step = max(1, BLOCK // (t * (v + k1 + max(x.shape[-1] for x, _ in uniq)) + k1 * k2))
    sa, sg = [], []
    for s in range(0, b, step):
        sl = slice(s, s + step)
        mask = valid[sl].to(dt).unsqueeze(-1)

        def xs():   # one masked, weighted layer input at a time, never all layers at once
            return ((x[sl].detach().to(dt) * (mask * w), l) for l, (x, w) in enumerate(uniq))
        g = _logit_grads(logits[sl].detach(), targets[sl], valid[sl])
        if pairing == "token_pair":
            ca = sum(_count_sketch(x, k1, seed, l) for x, l in xs())               # [c, T, k1]
            sa.append((ca.transpose(1, 2) @ _count_sketch(g, k2, seed, STREAM_VOCAB)).flatten(1))
        elif pairing == "aligned":
            sa.append(sum(_count_sketch(x, k1, seed, l, STREAM_POS_A) for x, l in xs()))
            sg.append(_count_sketch(g, k2, seed, STREAM_VOCAB, STREAM_POS_G))
        else:
            n_valid = mask.sum(1)
            sa.append(sum(_count_sketch(x.sum(1) / n_valid, k1, seed, l) for x, l in xs()))
            sg.append(_count_sketch(g.sum(1), k2, seed, STREAM_VOCAB))
        del g
    if pairing == "token_pair":
        return torch.cat(sa)
    return Features(torch.cat(sa), torch.cat(sg))

"""Unbiased Kronecker CountSketch of the LAI features; communication independent of T and B.
The sketch kernels and their hashing are here; how each pairing combines them, in pairings.py.

Each pairing's kernel is an inner product of per-sequence tensors x_j (x) y_j:
  token_pair: Phi_j = sum_t a_jt (x) g_jt      aligned: vec(a_j) (x) vec(g_j)
  pooled:     abar_j (x) gbar_j
A CountSketch C1 (k1 buckets) of the layer-input side and an independent C2 (k2 buckets) of
the vocabulary side are unbiased for inner products and independent, so
token_pair: S_j = sum_t C1(a_jt) (x) C2(g_jt) (k1 * k2 values) has E<S_z, S_j> = K(z, j), and
the reference enters as one summed sketch per rank (all-reduce of k1 * k2 floats);
aligned / pooled: <C1 x_z, C1 x_j> <C2 y_z, C2 y_j> has expectation K(z, j) for z != j, and
the per-sequence sketches (k1 + k2 floats) are gathered.

Hashing. A CountSketch is unbiased for any fixed bucket map as long as the signs of distinct
coordinates are pairwise independent (E[s_v s_w] = 0), so buckets are structured for speed and
signs are random: coordinate i of stream l goes to bucket (i + o_l) mod k with sign s_l(i), o_l a
random offset, s_l from a pairwise-independent family ((alpha i + beta) mod p) mod 2
(p = 2^31 - 1). The sketch of a [.., n] tensor is then a few contiguous slice sums (no scatter,
no atomics): memory-bound, one pass. Layer l is stream l; the vocabulary side one stream (its
offset is irrelevant, a cyclic shift of all buckets preserves inner products); aligned also
hashes the position t (an extra cyclic shift and sign per position), placed by one scatter-add
per layer (`positional`; atomic adds on CUDA, so its sums are reproducible there only to float
rounding). The parameters come from
(seed, stream) only, so every rank and every batch shape agrees, and sign tables are cached per
(size, seed, stream, device).

Cost: the layer-input side reads every captured input once for the whole batch; the vocabulary
side g = (softmax - onehot) / N is never materialised: per chunk of sequences the softmax is
computed once (fp32), signed in place and folded into k2 buckets, and the one-hot enters as one
bucket per token (aligned's and pooled's own passes hold each chunk's signed g: placed by position,
or summed over positions, then folded). Accumulation is fp32
(float64 for float64 models). token_pair adds k1 * k2 * T flops per sequence for the outer
product.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch

from .capture import Weight, scaled, unique_inputs

PRIME = (1 << 31) - 1
STREAM_VOCAB, STREAM_POS_A, STREAM_POS_G = -1, -2, -3
# elements of one [chunk, T, V] softmax block: small on CPU (cache), large on GPUs (launches)
CHUNK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}


def _params(seed: int, stream: int) -> list[int]:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + stream) % (1 << 62))
    return [int(v) for v in torch.randint(1, PRIME, (4,), generator=gen)]


def offset(k: int, seed: int, stream: int) -> int:
    """The bucket offset o of `stream` in a k-bucket sketch."""
    return _params(seed, stream)[0] % k


@functools.lru_cache(maxsize=512)
def signs(n: int, seed: int, stream: int, device: torch.device, dtype: torch.dtype
          ) -> torch.Tensor:
    """Signs +-1 of coordinates 0..n-1 of `stream`; [n] (cached: the same tensor every call)."""
    _, _, a, b = _params(seed, stream)
    x = torch.arange(n, dtype=torch.int64)
    return (1.0 - 2.0 * (((a * x + b) % PRIME) % 2).to(dtype)).to(device)


def fold(y: torch.Tensor, k: int, off: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[..., (i + off) mod k] += y[..., i] for every i: [..., n] -> [..., k] (added into
    `out` when given). Contiguous slice sums only; y is read once."""
    n = y.shape[-1]
    if n > k:                                       # whole blocks of k first, then rotate
        q = n // k
        folded = y[..., :q * k].unflatten(-1, (q, k)).sum(-2)
        if n > q * k:
            folded[..., :n - q * k] += y[..., q * k:]
        if off:
            folded = torch.roll(folded, off, -1)
        return folded if out is None else out.add_(folded)
    if out is None:
        out = y.new_zeros(*y.shape[:-1], k)
    first = min(n, k - off)                         # n <= k: at most two slices (wrap-around)
    out[..., off:off + first] += y[..., :first]
    if first < n:
        out[..., :n - first] += y[..., first:]
    return out


def _signed(x: torch.Tensor, n: int, k: int, seed: int, stream: int, dt: torch.dtype,
            weight: Weight = 1.0) -> torch.Tensor:
    """x * weight * s_stream, in dtype dt (one pass, no separate cast of x)."""
    return x * scaled(signs(n, seed, stream, x.device, dt), weight)


@functools.lru_cache(maxsize=512)
def _rotation(k: int, seed: int, stream: int, device: torch.device) -> torch.Tensor:
    """Index [k] with folded.index_select(-1, r)[..., b] = folded[..., (b - o) mod k]: the cyclic
    shift by the stream's offset o, as a tensor (compiled kernels then serve every layer)."""
    return ((torch.arange(k) - offset(k, seed, stream)) % k).to(device)


def input_kernel(x: torch.Tensor, s: torch.Tensor, rotation: torch.Tensor, k: int,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """One layer's C1 sketch: x [..., d] signed by s [d] (dtype of the result, weight folded
    in), folded into k buckets and rotated by its offset (`rotation`): [..., k], added into
    `out` when given (compiled: one pass, the per-layer sketch is never written)."""
    y = fold(x * s, k).index_select(-1, rotation)
    return y if out is None else out.add_(y)


def vocab_kernel(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                 s: torch.Tensor, k: int) -> torch.Tensor:
    """C2(g_t) for every token of `logits` [c, T, V] -> [c, T, k], g = (softmax - onehot) / N_j
    (0 at ignored positions), without materialising g: the softmax (dtype of the signs s [V])
    signed in place and folded; the one-hot is one bucket per token (bucket y mod k)."""
    out = fold_minus_onehot(torch.softmax(logits, dim=-1, dtype=s.dtype).mul_(s), targets, s, k)
    return out.mul_(token_scale(valid, s.dtype))


def token_scale(valid: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """1 / N_j at the valid tokens of valid [c, T], 0 elsewhere; [c, T, 1] in dtype dt."""
    return (valid.to(dt) / valid.sum(dim=1, keepdim=True).to(dt)).unsqueeze(-1)


def logit_grads_unchecked(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
               dt: torch.dtype) -> torch.Tensor:
    """g = d l_j / d logits = (softmax - onehot(target)) / N_j for every token of logits
    [c, T, V]: [c, T, V] in dtype dt, 0 at ignored positions (ids checked by the caller)."""
    g = torch.softmax(logits, dim=-1, dtype=dt)
    g.scatter_add_(-1, targets.clamp_min(0).unsqueeze(-1), -torch.ones_like(g[..., :1]))
    return g.mul_(token_scale(valid, dt))


def fold_minus_onehot(p: torch.Tensor, targets: torch.Tensor, s: torch.Tensor, k: int
                      ) -> torch.Tensor:
    """C2(p - onehot(targets)) [..., k] of a softmax already signed by s [V] (p [..., V]): p
    folded, the one-hot one bucket per token (bucket y mod k, sign s[y]; ignored targets count
    as id 0, for the caller's scale to zero)."""
    tgt = targets.clamp_min(0)
    return fold(p, k).scatter_add(-1, (tgt % k).unsqueeze(-1), -s[tgt].unsqueeze(-1))


class Kernels:
    """The two sketch kernels, eager or through torch.compile (the GPU default: the compiled
    kernels read each captured input and each logit once). If compiling fails (no Triton, an
    unsupported backend) the eager kernels run instead, after one warning."""

    _compiled: dict = {}
    _failed: str | None = None

    def __init__(self, compiled: bool):
        self.compiled = compiled and Kernels._failed is None

    def __call__(self, fn, *args):
        if self.compiled and Kernels._failed is None:
            try:
                if fn not in Kernels._compiled:
                    Kernels._compiled[fn] = torch.compile(fn, dynamic=None, fullgraph=True)
                return Kernels._compiled[fn](*args)
            except Exception as e:      # fall back, say so once
                Kernels._failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                warnings.warn(f"LAI sketch: torch.compile failed ({Kernels._failed}); "
                              "running the eager kernels", stacklevel=2)
        return fn(*args)


def input_side(inputs, seed: int, k1: int, dt: torch.dtype, mask: torch.Tensor | None,
                pooled_n: torch.Tensor | None = None, kernels: Kernels | None = None,
                cols: list[torch.Tensor] | None = None, aligned: bool = False) -> torch.Tensor:
    """sum_l C1_l(a_l): [B, T, k1] per token; with `pooled_n` the sketch of abar [B, k1]; with
    `aligned` the sketch of vec(a) over (position, coordinate) [B, k1] (`positional`).
    `mask` [B, T] (dt) zeroes ignored positions (None: the caller's vocabulary side is already
    zero there, as for token_pair); `cols`: per-input column weights (unique_inputs)."""
    out = None
    fused = kernels is not None and kernels.compiled and mask is None
    for layer, (x, w) in enumerate(unique_inputs(inputs, cols)):
        x = x.detach()
        if fused:                      # one compiled pass per layer, added into the sum
            assert kernels is not None
            s = signs(x.shape[-1], seed, layer, x.device, dt)
            out = kernels(input_kernel, x, scaled(s, w), _rotation(k1, seed, layer, x.device),
                          k1, out)
            continue
        if pooled_n is not None:
            assert mask is not None, "pooled_n needs the mask"
            x = (x.to(dt) * mask.unsqueeze(-1)).sum(1) / pooled_n
        elif mask is not None:
            x = x * mask.unsqueeze(-1)
        y = _signed(x, x.shape[-1], k1, seed, layer, dt, w)
        if aligned:
            idx = position_index(y.shape[1], y.shape[2], k1, offset(k1, seed, layer), seed,
                                 STREAM_POS_A, y.device)
            out = positional(y, k1, idx, seed, STREAM_POS_A, out)
            continue
        if out is None:
            out = y.new_zeros(*y.shape[:-1], k1)
        fold(y, k1, offset(k1, seed, layer), out)
    return out


def vocab_side(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, k2: int,
                seed: int, dt: torch.dtype, kernels: Kernels | None = None,
                row: torch.Tensor | None = None) -> torch.Tensor:
    """vocab_kernel with this seed's vocabulary signs (times `row` [V], the logit side's
    per-entry weight, if given: the sketch of row * g); [c, T, k2]."""
    s = vocab_signs(logits.shape[-1], seed, logits.device, dt, row)
    return (kernels or Kernels(False))(vocab_kernel, logits.detach(), targets, valid, s, k2)


@dataclass
class VocabRequest:
    """The vocabulary side of a batch's sketch, asked of the loss (xent.token_cross_entropy
    fills `tokens`), so the logits are read once for both: k2 buckets, the seed, the logit
    side's per-entry weight `row` [V] (Adam-aware scoring; None: plain). `tokens`: C2(g) per
    token [B, T, k2], what vocab_chunks yields for the whole batch."""
    k2: int
    seed: int
    row: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def signs(self, v: int, device: torch.device, dt: torch.dtype) -> torch.Tensor:
        """The vocabulary signs [v] of this seed, times `row` (as vocab_side signs them)."""
        return vocab_signs(v, self.seed, device, dt, self.row)


def vocab_signs(v: int, seed: int, device: torch.device, dt: torch.dtype,
                row: torch.Tensor | None = None) -> torch.Tensor:
    """The vocabulary side's signs [v] of `seed`, times `row` [v] (the logit side's per-entry
    weight) if given."""
    s = signs(v, seed, STREAM_VOCAB, device, dt)
    return s if row is None else s * row.to(device, dt)


def position_index(t: int, n: int, k: int, off: int, seed: int, stream: int,
                   device: torch.device) -> torch.Tensor:
    """int64 [T, n]: the bucket (i + off + h(t)) mod k of coordinate i at position t, h(t) the
    stream's random shift per position (= folding each token into k buckets at offset `off`,
    then shifting it by h(t))."""
    a, b, _, _ = _params(seed, stream)
    shift = ((a * torch.arange(t, dtype=torch.int64) + b) % PRIME) % k            # random h(t)
    cols = torch.arange(n, device=device)
    return (cols.unsqueeze(0) + (shift + off).to(device).unsqueeze(1)) % k


def positional(y: torch.Tensor, k: int, idx: torch.Tensor, seed: int, stream: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Sketch of the (position, coordinate) pairs of y [c, T, n] (already signed per
    coordinate; a temporary: signed per position in place) -> [c, k], added into `out` when
    given: coordinate i of position t to bucket idx[t, i] (position_index of the same stream)
    with sign s(t). One scatter-add that reads y once; per-token [T, k] sketches would be
    k / n times larger."""
    c, t, n = y.shape
    y = y.mul_(signs(t, seed, stream, y.device, y.dtype).view(1, t, 1))
    if out is None:
        out = y.new_zeros(c, k)
    return out.scatter_add_(1, idx.view(1, -1).expand(c, -1), y.reshape(c, t * n))


def signed_grads(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, seed: int,
                 dt: torch.dtype, row: torch.Tensor | None = None):
    """Yields (slice of sequences, s * g of their tokens [c, T, V] in dtype dt) chunk by chunk:
    g = (softmax - onehot) / N_j (0 at ignored positions) unfolded, s the vocabulary signs of
    this seed times `row` (vocab_side's weight). What the aligned and pooled sketches reduce
    (by position, or over positions) before folding."""
    b, t, v = logits.shape
    s = vocab_signs(v, seed, logits.device, dt, row)
    step = chunk_size(b, t, v, logits.device)
    for first in range(0, b, step):
        sl = slice(first, first + step)
        yield sl, logit_grads_unchecked(logits[sl].detach(), targets[sl], valid[sl], dt).mul_(s)


def aligned_vocab(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, k: int,
                  seed: int, dt: torch.dtype, row: torch.Tensor | None = None) -> torch.Tensor:
    """The aligned pairing's vocabulary side: the sketch of vec(row * g_j) over (position,
    entry) [B, k], entry v of position t in bucket (v + h(t)) mod k with sign s(v) s(t)."""
    b, t, v = logits.shape
    out = logits.new_zeros(b, k, dtype=dt)
    idx = position_index(t, v, k, 0, seed, STREAM_POS_G, logits.device)
    for sl, g in signed_grads(logits, targets, valid, seed, dt, row):
        positional(g, k, idx, seed, STREAM_POS_G, out[sl])
    return out


def pooled_vocab(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, k: int,
                 seed: int, dt: torch.dtype, row: torch.Tensor | None = None) -> torch.Tensor:
    """The pooled pairing's vocabulary side: C2(sum_t row * g_jt) [B, k] (= the sum over positions
    of vocab_side's per-token sketches, summed before folding)."""
    out = logits.new_empty(logits.shape[0], k, dtype=dt)
    for sl, g in signed_grads(logits, targets, valid, seed, dt, row):
        out[sl] = fold(g.sum(1), k)
    return out


def chunk_rows(width: int, device: torch.device) -> int:
    """Rows of a [rows, width] chunk of CHUNK_ELEMENTS elements for `device`."""
    return max(1, CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"]) // max(1, width))


def chunk_size(b: int, t: int, v: int, device: torch.device) -> int:
    """Sequences of [T, V] logits per chunk."""
    return chunk_rows(t * v, device)


def vocab_chunks(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, k2: int,
                 seed: int, dt: torch.dtype, kernels: Kernels, row: torch.Tensor | None = None,
                 tokens: torch.Tensor | None = None):
    """Yields (slice of sequences, C2(g) of their tokens [c, T, k2]) chunk by chunk, so no full
    [B, T, V] block is ever held (`row`: vocab_side's weight); `tokens`: the whole batch's,
    already folded by the loss (a filled VocabRequest of the same k2, seed and row), as one
    chunk."""
    if tokens is not None:
        yield slice(None), tokens
        return
    b, t, v = logits.shape
    step = chunk_size(b, t, v, logits.device)
    for s in range(0, b, step):
        sl = slice(s, s + step)
        yield sl, vocab_side(logits[sl], targets[sl], valid[sl], k2, seed, dt, kernels, row)

"""Exact LAI kernels, chunked so peak memory stays bounded (which pairing uses which: pairings.py).

  token-pair kernel:  K(z, j) = sum_{t,t'} <a_zt, a_jt'> <g_zt, g_jt'> = <Phi_z, Phi_j>,
                      Phi = sum_t a_t (x) g_t                       (token_pair)
  product kernel:     K(z, j) = <vec a_z, vec a_j> * <vec g_z, vec g_j>  (aligned: per-token
                      features; pooled: abar, gbar; and both pairings' sketches)
The token-pair kernel sums over reference tokens by whichever contraction is cheaper: token Grams
(n_q * n_r * (D + V) flops) or the summed pseudo-gradient S = sum_z Phi_z (D x V, (n_q + n_r) *
D * V flops); both only touch valid positions (a = g = 0 elsewhere).
"""
from __future__ import annotations

import torch

from .features import Features

BLOCK = 1 << 22          # max elements of one Gram block
PHI_MAX = 1 << 25        # max elements of the summed pseudo-gradient S (D x V)


def _tokens(f: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a [n, D], g [n, V], sequence index [n]) over the non-zero positions."""
    keep = (f.g != 0).any(-1)
    return f.a[keep], f.g[keep], keep.nonzero()[:, 0]


def product_self(f: Features) -> torch.Tensor:
    """Product kernel K(j, j) for every sequence of `f`; [B]."""
    return f.a.flatten(1).square().sum(1) * f.g.flatten(1).square().sum(1)


def product_totals(q: Features, r: Features) -> torch.Tensor:
    """sum_{z in r} of the product kernel K(z, j) for every sequence j of `q`; [B_q].
    Per-token features of different T are zero-padded (padded positions are ignored ones)."""
    qa, ra = q.a.flatten(1), r.a.flatten(1)
    qg, rg = q.g.flatten(1), r.g.flatten(1)
    if qa.shape[1] != ra.shape[1]:
        t = max(q.a.shape[1], r.a.shape[1])
        pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, t - x.shape[1])).flatten(1)  # noqa: E731
        qa, ra, qg, rg = pad(q.a), pad(r.a), pad(q.g), pad(r.g)
    return ((qa @ ra.T) * (qg @ rg.T)).sum(1)


def token_pair_self(f: Features) -> torch.Tensor:
    """Token-pair kernel K(j, j) for every sequence of `f` (per-token features); [B]."""
    out = []
    step = max(1, BLOCK // (f.a.shape[1] ** 2))
    for s in range(0, f.n, step):
        a, g = f.a[s:s + step], f.g[s:s + step]
        out.append(((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2)))
    return torch.cat(out)


def token_pair_route(nq: int, nr: int, d: int, v: int) -> str:
    """"phi" (summed pseudo-gradient) when cheaper and small enough, else "gram"."""
    return "phi" if (nq + nr) * d * v < nq * nr * (d + v) and d * v <= PHI_MAX else "gram"


def token_pair_totals(q: Features, r: Features) -> torch.Tensor:
    """sum_{z in r} of the token-pair kernel K(z, j) for every sequence j of `q`; [B_q]."""
    qa, qg, qseq = _tokens(q)
    ra, rg, _ = _tokens(r)
    d, v = qa.shape[1], qg.shape[1]
    nq, nr = qa.shape[0], ra.shape[0]
    acc = qa.new_zeros(nq)
    if token_pair_route(nq, nr, d, v) == "phi":
        s_sum = ra.T @ rg                                   # [D, V] = sum_z Phi_z
        step = max(1, BLOCK // max(d, v))
        for i in range(0, nq, step):
            acc[i:i + step] = ((qa[i:i + step] @ s_sum) * qg[i:i + step]).sum(1)
    else:
        step = max(1, int(BLOCK ** 0.5))
        for i in range(0, nq, step):
            for k in range(0, nr, step):
                ka = qa[i:i + step] @ ra[k:k + step].T
                kg = qg[i:i + step] @ rg[k:k + step].T
                acc[i:i + step] += (ka * kg).sum(1)
    return acc.new_zeros(q.n).index_add_(0, qseq, acc)


def reference_mean(cross: torch.Tensor, n_cross: int, self_k: torch.Tensor | None,
                   include_self: bool) -> torch.Tensor:
    """value_j = (cross_j [+ K(j, j)]) / (n_cross [+ 1]) as float64, where cross_j sums K(z, j)
    over the reference without j and n_cross counts those z."""
    if include_self:
        cross, n_cross = cross + self_k, n_cross + 1
    if n_cross <= 0:
        raise ValueError("reference: leave-one-out needs at least 2 sequences in the reference "
                         "(got 1); use a larger batch or include_self=True")
    return cross.to(torch.float64) / n_cross

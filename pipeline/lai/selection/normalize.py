"""Step-normalised values: raw LAI values drift by orders of magnitude over training (they scale
with the gradient norms), so a fixed threshold means different things early and late. Normalised
against the global micro-batch they mean the same at every step:

  zscore  (v_j - mean) / std over the global micro-batch (all ranks; std with ddof 0; 0 when all
          values are equal): "how many spreads below the batch's typical sequence"
  rank    the centred percentile (rank_j - 1/2) / N - 1/2 in (-1/2, 1/2), ties averaged: a
          threshold of -0.4 marks the lowest 10% of every batch

Non-finite values (not scored) stay NaN and are left out of the statistics.
"""
from __future__ import annotations

import torch

from pipeline.comm import Comm

NORMALIZE = ("none", "zscore", "rank")


def _global(values: torch.Tensor, comm: Comm) -> tuple[torch.Tensor, int]:
    """(all ranks' values in rank order, float64 on the CPU; this rank's offset in them)."""
    parts = comm.gather(values.detach().to(torch.float64))
    return torch.cat(parts).cpu(), sum(p.numel() for p in parts[:comm.rank])


def normalize(values: torch.Tensor, mode: str, comm: Comm = Comm()) -> torch.Tensor:
    """float64 [B]: this rank's `values` normalised (`mode` zscore | rank) against the global
    micro-batch of `comm`. Collective."""
    if mode not in NORMALIZE[1:]:
        raise ValueError(f"normalize: unknown mode {mode!r}, expected zscore or rank")
    everyone, offset = _global(values, comm)
    out = torch.full_like(everyone, float("nan"))
    ok = torch.isfinite(everyone)
    v = everyone[ok]
    if v.numel():
        if mode == "zscore":
            std = v.std(unbiased=False)
            out[ok] = (v - v.mean()) / std if std > 0 else torch.zeros_like(v)
        else:
            sorted_v, order = torch.sort(v)
            _, group, counts = torch.unique_consecutive(sorted_v, return_inverse=True,
                                                        return_counts=True)
            first = torch.cumsum(counts, 0) - counts          # ties share their average rank
            ranks = torch.empty_like(v)
            ranks[order] = (first + (counts - 1) / 2).to(v.dtype)[group]
            out[ok] = (ranks + 0.5) / v.numel() - 0.5
    return out[offset:offset + values.numel()].to(values.device)

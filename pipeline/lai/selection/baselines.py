"""The filters that decide which sequences are excluded: LAI and the baselines it is compared with.

Each filter turns this rank's part of the global micro-batch (`FilterInput`) into a float64 score
per sequence, or None (keep everything); the selector hands the scores to the FilterPolicy
(score <= threshold -> candidate, same warmup, same cap, never the whole global micro-batch).
Scores use the LAI sign convention: higher = more worth keeping.

  lai            the LAI values (needs lai.enabled)
  none           keep everything
  random         exclude each sequence with probability lai.filter.baseline_rate: a coin per (seed,
                 seq_id), the same whichever rank holds the sequence
  loss           exclude the lai.filter.baseline_rate fraction of highest losses of the global
                 micro-batch (self-paced-learning style)
  full_gradient  the exact full-gradient inner product of each sequence with the rest of the
                 global micro-batch (pipeline.lai.full_gradient_values; j left out unless
                 include_self): an upper reference for small models, not a production filter
  oracle         ground truth by source: 0.5 - the fraction of the sequence's tokens from the
                 training sources named in lai.filter.oracle_sources, so the sequences at least half
                 from them are excluded, purest first, under the same cap: what a perfect filter
                 would do (the benchmarks' reference; reads the training documents)

A new filter is one more `Filter` in FILTERS (its name becomes a valid `lai.filter.kind`); anything it
needs beyond FilterInput's fields is a field added there and filled by the caller, and what it
must check against the run once (its `check`) runs when the Selector is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.comm import Comm
from pipeline.errors import UserError

from .reference import full_gradient_values

if TYPE_CHECKING:
    from .memory import Documents


class FilterOptions(Protocol):
    """What a filter reads of its settings (pipeline.lai.selection.policy.FilterSettings, lai.filter)."""
    baseline_rate: float
    oracle_sources: list[str]


@dataclass
class FilterInput:
    """What a filter may look at: this rank's sequences of the global micro-batch."""
    step: int                          # optimizer step, 1-based
    seq_ids: torch.Tensor              # int64 [B] global sequence ids
    input_ids: torch.Tensor | None     # int64 [B, T] (full_gradient)
    targets: torch.Tensor | None       # int64 [B, T] position-aligned, -100 ignored
    losses: torch.Tensor               # [B] per-sequence mean losses
    model: nn.Module | None = None     # the unwrapped model (full_gradient); left as found
    lai_values: torch.Tensor | None = None   # float64 [B] when lai.enabled
    comm: Comm = Comm()                # the data-parallel ranks (collective filters)
    documents: Documents | None = None   # the training data (oracle)
    segments: torch.Tensor | None = None   # lai.unit=document: int64 [B], each unit's document
                                       # run in its row (seq_ids and losses are then the units')
    include_self: bool = False         # full_gradient: j in its own reference
                                       # (lai.score.include_self)


@dataclass(frozen=True)
class Filter:
    scores: Callable[[FilterInput, FilterOptions, int], torch.Tensor | None]  # (input, settings, seed)
    needs_lai: bool = False            # its scores are the LAI values
    own_threshold: float | None = None   # the cut its scores are built around (random, loss,
                                       # oracle: score <= 0 excluded); None: lai.filter.threshold
    uses_rate: bool = False            # excludes about lai.filter.baseline_rate of each micro-batch
    needs_full_params: bool = False    # every rank needs the whole model (not with ZeRO-3)
    about: str = ""
    check: Callable[[FilterOptions, "Documents | None"], None] | None = None   # once, against
                                       # the training documents: a UserError if they don't fit


def random_scores(seq_ids: torch.Tensor, seed: int, rate: float,
                  segments: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [B]: u - rate, u uniform in [0, 1) from (seed, seq_id) alone, or (seed, seq_id,
    segment) per document unit (<= 0 with probability `rate`)."""
    keys = [[seed, i] for i in seq_ids.tolist()] if segments is None else \
        [[seed, i, k] for i, k in zip(seq_ids.tolist(), segments.tolist())]
    u = [np.random.default_rng(key).random() for key in keys]
    return torch.tensor(u, dtype=torch.float64, device=seq_ids.device) - rate


def loss_scores(losses: torch.Tensor, rate: float, comm: Comm = Comm()) -> torch.Tensor:
    """float64 [B]: kth - l_j, kth = the k-th highest loss of the global micro-batch (all ranks of
    `comm`), k = round(rate * N): <= 0 for the k highest losses."""
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses: expected a non-empty 1-D tensor, got {tuple(losses.shape)}")
    losses = losses.detach().double()
    everyone = torch.cat(comm.gather(losses))
    k = round(rate * everyone.numel())
    # k = 0 (a rate below half a sequence): every score > 0, nothing excluded
    kth = torch.topk(everyone, k).values[-1] if k else everyone.max() + 1
    return kth - losses


def full_gradient_scores(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, *,
                         include_self: bool, comm: Comm = Comm()) -> torch.Tensor:
    """float64 [B]: full_gradient_values of this rank's sequences against the global micro-batch
    (all ranks' sequences gathered; local batches are equal-sized). Every rank computes the whole
    global batch, so the model must hold its full parameters. Whole sequences only: targets must
    be the inputs shifted by one (refused on every rank together otherwise)."""
    bad = bool((targets == -100).any()) or not torch.equal(input_ids[:, 1:], targets[:, :-1])
    if comm.any(bad, input_ids.device):
        raise UserError("lai.filter.kind: full_gradient scores whole sequences whose targets are the "
                         "inputs shifted by one; a batch has ignored (-100) or other targets")
    # the seq_len + 1 token sample: HF shifts inside (labels=None), all seq_len targets count
    x = torch.cat(comm.gather(torch.cat([input_ids[:, :1], targets], 1), same_shape=True))
    values = full_gradient_values(model, x, include_self=include_self)
    b = input_ids.shape[0]
    return values[comm.rank * b:(comm.rank + 1) * b]


def _full_gradient(i: FilterInput, s: FilterOptions, seed: int) -> torch.Tensor:
    if i.model is None or i.input_ids is None:
        raise ValueError("lai.filter.kind=full_gradient: the filter input needs input_ids and the "
                         "model")
    return full_gradient_scores(i.model, i.input_ids, i.targets, include_self=i.include_self,
                                comm=i.comm)


def oracle_scores(seq_ids: torch.Tensor, documents: Documents, harmful: set[str],
                  segments: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [B]: 0.5 - the fraction of each sequence's tokens from the `harmful` sources
    (<= 0: at least half of it is harmful); per document unit (`segments`): -0.5 for a harmful
    document, 0.5 for another."""
    frac = []
    for k, i in enumerate(seq_ids.tolist()):
        spans = documents.locate(int(i))
        if segments is not None:
            spans = [spans[int(segments[k])]]
        frac.append(sum(s.num_tokens for s in spans if s.source in harmful)
                    / max(1, sum(s.num_tokens for s in spans)))
    return 0.5 - torch.tensor(frac, dtype=torch.float64, device=seq_ids.device)


def _oracle(i: FilterInput, s: FilterOptions, seed: int) -> torch.Tensor:
    if i.documents is None:
        raise ValueError("lai.filter.kind=oracle: the filter input needs the training documents")
    return oracle_scores(i.seq_ids, i.documents, set(s.oracle_sources), i.segments)


def _check_oracle(s: FilterOptions, documents: Documents | None) -> None:
    if documents is None:
        raise ValueError("lai.filter.kind=oracle: the selector needs the training documents")
    known = documents.prepared_sources
    unknown = [n for n in s.oracle_sources if n not in known]
    if unknown:
        raise UserError(f"lai.filter.oracle_sources: {', '.join(map(repr, unknown))} not among the "
                        f"training data's sources ({', '.join(sorted(known))})")


FILTERS: dict[str, Filter] = {
    "lai": Filter(lambda i, s, seed: i.lai_values, needs_lai=True, about="the LAI values"),
    "none": Filter(lambda i, s, seed: None, about="keep everything"),
    "random": Filter(lambda i, s, seed: random_scores(i.seq_ids, seed, s.baseline_rate,
                                                      i.segments),
                     uses_rate=True, own_threshold=0.0, about="a seeded coin per sequence"),
    "loss": Filter(lambda i, s, seed: loss_scores(i.losses, s.baseline_rate, i.comm),
                   uses_rate=True, own_threshold=0.0,
                   about="the highest losses of the global micro-batch"),
    "full_gradient": Filter(_full_gradient, needs_full_params=True,
                            about="exact per-sample gradients of the whole model on every rank: "
                                  "a small-model evaluation reference"),
    "oracle": Filter(_oracle, check=_check_oracle, own_threshold=0.0,
                     about="ground truth: the sequences of the sources in lai.filter.oracle_sources"),
}

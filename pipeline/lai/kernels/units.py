"""Units of valuation: whole sequences, or the document segments of packed sequences.

With lai.unit=document a packed row of several documents is valued, kept or dropped per
document: unit u is the target positions of row `rows[u]` whose target token belongs to document
run `segment[u]` of that row (its index among the row's DocSpans, pipeline.data.DocSpan), and it
is treated exactly like a sequence of its own:

    l_u      = mean cross-entropy over the unit's N_u target positions
    g_{u,t}  = (softmax - onehot) / N_u at the unit's positions, 0 elsewhere
    a_{u,t}  = the row's layer inputs at the unit's positions, 0 elsewhere

so its LAI value is the value the row would get with every other target ignored, and the
trained loss masks a dropped unit's tokens, not the row. A unit holds at least one target.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .xent import IGNORE

UNITS = ("sequence", "document")          # lai.unit


@dataclass(frozen=True)
class Units:
    """index: int64 [B, T], the unit of each target position (-1 at ignored targets);
    rows, segment, tokens: int64 [P], each unit's row, document run within the row, and
    target count."""
    index: torch.Tensor
    rows: torch.Tensor
    segment: torch.Tensor
    tokens: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.rows.numel())


def units_of(segments: torch.Tensor, targets: torch.Tensor) -> Units:
    """The units of a batch: `segments` int64 [B, T] (the document run of each target position,
    as the loader gives it), `targets` [B, T] (-100 ignored). Units are numbered row by row, then
    by segment."""
    if segments.shape != targets.shape:
        raise ValueError(f"segments: expected shape {tuple(targets.shape)} (= targets), got "
                         f"{tuple(segments.shape)}")
    valid = targets != IGNORE
    width = int(segments.max()) + 1 if segments.numel() else 1
    key = torch.arange(segments.shape[0], device=segments.device).unsqueeze(1) * width + segments
    present, inverse, tokens = torch.unique(key[valid], return_inverse=True, return_counts=True)
    index = torch.full_like(segments, -1)
    index[valid] = inverse
    return Units(index, present // width, present % width, tokens)


def unit_mask(units: Units) -> torch.Tensor:
    """bool [P, T]: the positions of each unit's row that belong to the unit."""
    return units.index[units.rows] == torch.arange(units.count,
                                                   device=units.index.device).unsqueeze(1)


def unit_targets(units: Units, targets: torch.Tensor) -> torch.Tensor:
    """int64 [P, T]: each unit's row of `targets` with every position outside the unit ignored
    (the pseudo-sequence whose value is the unit's value)."""
    rows = targets[units.rows]
    return torch.where(unit_mask(units), rows, torch.full_like(rows, IGNORE))


def unit_losses(token_ce: torch.Tensor, units: Units) -> torch.Tensor:
    """[P] mean cross-entropy of each unit from the token losses `token_ce` [B, T] (0 at ignored
    targets); differentiable."""
    valid = units.index >= 0
    sums = token_ce.new_zeros(units.count).index_add(0, units.index[valid], token_ce[valid])
    return sums / units.tokens.to(sums.dtype)

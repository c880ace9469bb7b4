"""Per-sequence LAI features (the inputs of the exact kernels; which ones a pairing uses is the
pairing object's choice, pairings.py):

token_features: a [B, T, D] = the layer inputs concatenated over layers (each distinct input
once, scaled by sqrt(#layers reading it)), zero at ignored target positions; g [B, T, V] = logit
gradients.  pooled_features: a [B, D] = mean of a over valid positions (abar), g [B, V] = sum of
g over positions (gbar).
With `weights` (Adam-aware scoring, precondition.InputWeights) each input coordinate is scaled by
sqrt(c) (summed over the layers reading it) instead, and g by sqrt(r_head) per vocabulary entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .capture import scaled, unique_inputs
from .grads import check_targets, compute_dtype
from .sketch import logit_grads_unchecked

if TYPE_CHECKING:
    from .precondition import InputWeights

@dataclass
class Features:
    a: torch.Tensor
    g: torch.Tensor

    @property
    def n(self) -> int:
        return self.a.shape[0]

    def to(self, device) -> "Features":
        return Features(self.a.to(device), self.g.to(device))


def check_inputs(inputs: list[torch.Tensor], logits: torch.Tensor) -> list[torch.Tensor]:
    """The layer inputs as [B, T, d] ([B, T] = logits'): a layer that saw the batch flattened to
    [B*T, d] rows (OPT's MLP; row b * T + t is position t of sequence b) is viewed back. The same
    tensor read by several layers stays one object (unique_inputs counts on it)."""
    if not inputs:
        raise ValueError("inputs: no layer inputs captured (run the forward inside "
                         "LayerInputCapture; a compiled model needs its capture hooks before its "
                         "first forward: capture.install_hooks)")
    b, t = logits.shape[:2]
    viewed: dict[int, torch.Tensor] = {}
    out = []
    for i, x in enumerate(inputs):
        if x.dim() == 2 and x.shape[0] == b * t:
            x = viewed.setdefault(id(x), x.reshape(b, t, x.shape[1]))
        elif x.dim() != 3 or tuple(x.shape[:2]) != (b, t):
            raise ValueError(f"inputs[{i}]: expected [B, T, d] or [B*T, d] with [B, T] = "
                             f"{(b, t)}, got {tuple(x.shape)}")
        out.append(x)
    return out


def _prepared(inputs, logits, targets, weights):
    """(distinct inputs with weights, valid mask as a float [B, T, 1], logit gradients, dtype)."""
    valid = check_targets(logits, targets)
    inputs = check_inputs(inputs, logits)
    dt = compute_dtype(logits)
    g = logit_grads_unchecked(logits.detach(), targets, valid, compute_dtype(logits))
    if weights is not None:
        g.mul_(weights.logit_side(dt, g.device))
    uniq = unique_inputs(inputs, None if weights is None else weights.cols)
    return uniq, valid.to(dt).unsqueeze(-1), g, dt


def token_features(inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
                   weights: InputWeights | None = None) -> Features:
    """Per-token features a [B, T, D], g [B, T, V]; fp32 (float64 for a float64 model)."""
    uniq, mask, g, dt = _prepared(inputs, logits, targets, weights)
    a = torch.cat([scaled(x.detach().to(dt), w) for x, w in uniq], dim=-1) * mask
    return Features(a, g)


def pooled_features(inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
                    weights: InputWeights | None = None) -> Features:
    """abar [B, D] (mean over valid positions), gbar [B, V] (sum over positions)."""
    uniq, mask, g, dt = _prepared(inputs, logits, targets, weights)
    a = torch.cat([scaled((x.detach().to(dt) * mask).sum(dim=1), w) for x, w in uniq], dim=-1)
    return Features(a / mask.sum(dim=1), g.sum(dim=1))


def cat_features(parts: list[Features]) -> Features:
    """Concatenate along the batch, zero-padding the position dim (zeros are ignored
    positions, so padding changes no kernel value)."""
    if parts[0].a.dim() == 2:
        return Features(torch.cat([p.a for p in parts]), torch.cat([p.g for p in parts]))
    t = max(p.a.shape[1] for p in parts)

    def pad(x):
        return torch.nn.functional.pad(x, (0, 0, 0, t - x.shape[1]))
    return Features(torch.cat([pad(p.a) for p in parts]), torch.cat([pad(p.g) for p in parts]))

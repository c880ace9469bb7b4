"""Per-sequence loss and its closed-form logit gradient (no backward pass).

Targets here are already aligned with positions (targets[:, t] is the token predicted at t,
-100 = ignored); `shift_labels` converts HF-convention labels (`check_ids` checks ids and labels
first). Shapes: logits [B, T, V], targets [B, T].
"""
from __future__ import annotations

import torch

from .sketch import VocabRequest, logit_grads_unchecked
from .units import Units, unit_losses
from .xent import IGNORE, compute_dtype, token_cross_entropy


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """HF convention (labels[:, t+1] is predicted at t) -> position-aligned targets [B, T]."""
    pad = torch.full_like(labels[:, :1], IGNORE)
    return torch.cat([labels[:, 1:], pad], dim=1)


def check_ids(input_ids: torch.Tensor, labels: torch.Tensor | None, name: str = "input_ids"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate [B, T] ids/labels; return (input_ids, shifted targets)."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise ValueError(f"{name}: expected an int tensor [B, T], got {got}")
    if input_ids.numel() == 0:
        raise ValueError(f"{name}: empty batch (shape {tuple(input_ids.shape)})")
    labels = input_ids if labels is None else labels
    if tuple(labels.shape) != tuple(input_ids.shape):
        raise ValueError(f"labels for {name}: shape {tuple(labels.shape)} != "
                         f"{name} shape {tuple(input_ids.shape)}")
    if not (labels[:, 1:] != -100).any():
        raise ValueError(f"labels for {name}: all labels are -100 (nothing to score)")
    return input_ids, shift_labels(labels)


def check_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Validate shapes and ids; return the valid mask [B, T] (every sequence needs a target)."""
    if logits.dim() != 3:
        raise ValueError(f"logits: expected [B, T, V], got shape {tuple(logits.shape)}")
    if targets.dim() != 2 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:2])} (= logits [B, T]), "
                         f"got {tuple(targets.shape)}")
    if targets.shape[0] == 0 or targets.shape[1] == 0:
        raise ValueError(f"empty batch: targets shape {tuple(targets.shape)}")
    valid = targets != IGNORE
    bad = valid & ((targets < 0) | (targets >= logits.shape[-1]))
    if bad.any():
        raise ValueError(f"targets: ids must be in [0, {logits.shape[-1]}) or {IGNORE}, "
                         f"got {int(targets[bad][0])}")
    empty = (~valid.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"targets: sequence {int(empty[0])} has no valid target "
                         f"(all labels are {IGNORE})")
    return valid


def logit_grads(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """g[j, t] = d l_j / d logits[j, t] = (softmax - onehot(target)) / N_j, 0 at ignored
    positions; [B, T, V] in fp32 (float64 for float64 logits), detached."""
    valid = check_targets(logits, targets)
    return logit_grads_unchecked(logits.detach(), targets, valid, compute_dtype(logits))


def per_sequence_loss(logits: torch.Tensor, targets: torch.Tensor,
                      compiled: bool | None = None, vocab: VocabRequest | None = None
                      ) -> torch.Tensor:
    """l_j = mean cross-entropy over the valid targets of sequence j; [B], differentiable,
    fp32 (float64 for float64 logits). Chunked over the tokens (xent.py: no [B, T, V] fp32
    tensor); `compiled`: its kernels through torch.compile (None: on CUDA); `vocab`: filled
    with the LAI sketch's vocabulary side in the same pass (xent.py)."""
    valid = check_targets(logits, targets)
    ce = token_cross_entropy(logits, targets, compiled, vocab)
    return ce.sum(dim=1) / valid.sum(dim=1).to(ce.dtype)


def per_unit_loss(logits: torch.Tensor, targets: torch.Tensor, units: Units,
                  compiled: bool | None = None, vocab: VocabRequest | None = None
                  ) -> torch.Tensor:
    """l_u = mean cross-entropy over the target positions of unit u (pipeline.lai.kernels.units); [P],
    differentiable, as per_sequence_loss."""
    check_targets(logits, targets)
    return unit_losses(token_cross_entropy(logits, targets, compiled, vocab), units)

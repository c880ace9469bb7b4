"""How LAI runs a model: logits of an HF causal LM, and eval mode that restores itself."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def model_logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of an HF causal LM (or of a module returning logits / a tuple)."""
    out = model(input_ids=input_ids)
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) inside; every submodule's previous mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training

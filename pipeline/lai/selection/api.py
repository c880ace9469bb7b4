"""Model-level entry point: `lai_values(model, input_ids, labels, ...)` (HF label convention).

The forward runs under torch.no_grad in eval mode (dropout off, deterministic); the model's
mode, parameters, .grad and requires_grad are left as found.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.comm import Comm

from ..kernels.capture import LayerInputCapture
from ..kernels.grads import check_ids
from ..kernels.modelio import eval_mode, model_logits
from ..kernels.precondition import AdamFactors
from .scorer import DEFAULT_PAIRING, LAIScorer, ScoreSettings


def lai_values(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
               ref_input_ids: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
               pairing: str = DEFAULT_PAIRING, method: str = "exact", layers: str = "linear",
               include_self: bool = False, sketch_dim: int | None = None, seed: int = 0,
               compile: bool | None = None, preconditioner: AdamFactors | None = None
               ) -> torch.Tensor:
    """float64 [B] LAI values of the batch against ref_* (default: the batch itself, j left
    out unless include_self). Single-process: no communication even if torch.distributed is
    initialized. `preconditioner`: Adam-aware scoring with these factors
    (AdamFactors.from_optimizer(model, optimizer, layers)). See pipeline.lai for the
    definitions."""
    s = ScoreSettings(pairing=pairing, method=method, layers=layers,
                      reference="local" if ref_input_ids is None else "val",
                      include_self=bool(include_self), sketch_dim=sketch_dim,
                      compile=compile is not False,
                      precondition="none" if preconditioner is None else "adam")
    scorer = LAIScorer(s.resolved(), seed, compile_cpu=compile is True)
    scorer.factors = preconditioner
    input_ids, targets = check_ids(input_ids, labels)
    if ref_input_ids is None and ref_labels is not None:
        raise ValueError("ref_labels given without ref_input_ids")
    with torch.no_grad(), eval_mode(model):
        if ref_input_ids is not None:
            scorer._set_val(model, [check_ids(ref_input_ids, ref_labels, "ref_input_ids")],
                            Comm.local())
        with LayerInputCapture(model, layers) as cap:
            logits = model_logits(model, input_ids)
        # local/val: no communication
        return scorer.values(cap.inputs, logits, targets, weights=scorer.input_weights(cap))

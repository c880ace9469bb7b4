"""Layer-Aware Influence (LAI): online per-sequence valuation without a backward pass.

value(j) approximates <grad l_R, grad l_j> (> 0: a step on sequence j lowers the loss of the
reference R) from the forward's layer inputs and closed-form logit gradients. The math (pairings,
sketch, Adam-aware scoring, sign convention, costs) is in docs/LAI.md, once; how to set it, in
the README (Valuation). No DeepSpeed here: ranks talk through pipeline.comm.

Two subpackages; kernels/ never imports selection/:
  kernels/    the math of a value: layer inputs, logit gradients, features, exact and sketched
              pairings, Adam-aware factors, document units (no policy, no ranks)
  selection/  what the trainer uses: the lai.* settings blocks (each beside its reader), the
              scorer and its references, normalisation, memory, the filter policy and
              baselines, the Selector, weighting, source mixing
This package re-exports the public names below; code inside pipeline/ imports the real module.
"""
from .selection.api import lai_values
from .selection.baselines import (FILTERS, FilterInput, full_gradient_scores, loss_scores, oracle_scores,
                        random_scores)
from .kernels.capture import LAYER_SETS, LayerInputCapture
from .kernels.pairings import PAIRINGS
from .kernels.grads import logit_grads, per_sequence_loss
from .selection.memory import MemorySettings
from .selection.mixing import MixingSettings, SourceMixer
from .selection.policy import FilterPolicy, FilterSettings
from .kernels.precondition import (PRECONDITIONS, AdamFactors, AdamPreconditioner,
                           elementwise_preconditioner)
from .selection.reference import full_gradient_values, ghost_values
from .selection.scorer import (DEFAULT_PAIRING, DEFAULT_SKETCH_DIM, METHODS, REFERENCES, LAIScorer,
                     ScoreSettings)
from .selection.selector import Selection, Selector
from .selection.settings import LAISettings, SelectSettings
from .selection.weighting import WeightingSettings

__all__ = [
    "DEFAULT_PAIRING", "DEFAULT_SKETCH_DIM", "FILTERS", "LAYER_SETS", "METHODS", "PAIRINGS",
    "PRECONDITIONS", "REFERENCES",
    "AdamFactors", "AdamPreconditioner", "FilterInput", "FilterPolicy", "FilterSettings",
    "LAIScorer", "LAISettings", "LayerInputCapture", "MemorySettings", "MixingSettings",
    "ScoreSettings", "SelectSettings", "Selection", "Selector", "SourceMixer", "WeightingSettings",
    "elementwise_preconditioner", "full_gradient_scores", "full_gradient_values", "ghost_values",
    "lai_values", "logit_grads",
    "loss_scores", "oracle_scores", "per_sequence_loss", "random_scores",
]

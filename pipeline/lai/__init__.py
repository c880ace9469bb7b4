"""Layer-Aware Influence (LAI): online per-sequence valuation without a backward pass.

value(j) approximates <grad l_R, grad l_j> (> 0: a step on sequence j lowers the loss of the
reference R) from the forward's layer inputs and closed-form logit gradients. The math (pairings,
sketch, Adam-aware scoring, sign convention, costs) is in docs/LAI.md, once; how to set it, in
the README (Valuation). No DeepSpeed here: ranks talk through pipeline.comm.

Modules:
  settings.py     LAISettings: the lai.* blocks (each beside its reader), resolved once
  pairings.py     one object per pairing (features, exact kernel, sketch), built on
                  features.py, exact.py, sketch.py
  capture.py      layer-input hooks;  grads.py  losses, logit gradients;  xent.py  chunked CE
  scorer.py       LAIScorer: values against a local / global / val reference (pipeline.comm)
  normalize.py    values as z-scores or centred ranks within the global micro-batch
  memory.py       each document's remembered normalised score, across epochs
  policy.py       FilterPolicy: threshold, warmup, the per-step exclusion budget
  baselines.py    FILTERS: lai and the baselines (none, random, loss, full_gradient, oracle)
  selector.py     Selector: what the trainer calls per micro-batch (values, keep, value_norm)
  weighting.py    lai.weighting: bounded per-sequence loss weights from value_norm
  units.py        lai.unit=document: the document units of packed sequences (values, keep
                  and loss masks per document instead of per sequence)
  precondition.py Adam-aware scoring (rank-1 factors of Adam's preconditioner)
  reference.py    full-gradient and ghost reference values (evaluation)
  mixing.py       SourceMixer: source weights from the mean normalised value or the loss
  api.py          lai_values;  modelio.py  logits of an HF model, eval mode that restores itself
"""
from .api import lai_values
from .baselines import (FILTERS, FilterInput, full_gradient_scores, loss_scores, oracle_scores,
                        random_scores)
from .capture import LAYER_SETS, LayerInputCapture
from .pairings import PAIRINGS
from .grads import logit_grads, per_sequence_loss
from .memory import MemorySettings
from .mixing import MixingSettings, SourceMixer
from .policy import FilterPolicy, FilterSettings
from .precondition import (PRECONDITIONS, AdamFactors, AdamPreconditioner,
                           elementwise_preconditioner)
from .reference import full_gradient_values, ghost_values
from .scorer import (DEFAULT_PAIRING, DEFAULT_SKETCH_DIM, METHODS, REFERENCES, LAIScorer,
                     ScoreSettings)
from .selector import Selection, Selector
from .settings import LAISettings, SelectSettings
from .weighting import WeightingSettings

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

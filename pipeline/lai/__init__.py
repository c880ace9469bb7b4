"""Layer-Aware Influence (LAI): online per-sequence valuation without a backward pass.

Definitions (causal LM; position-aligned targets, -100 ignored; the public lai_values /
full_gradient_values take HF labels and shift them inside):
  l_j        = mean cross-entropy of sequence j over its N_j valid target positions
  g_{j,t}    = d l_j / d logits_{j,t} = (softmax - onehot(target)) / N_j, 0 at ignored positions
               (closed form from the forward's logits, fp32 / float64 for float64 models)
  a^(l)_{j,t} = input of layer l at position t, taken as 0 at ignored target positions.
               Layer set "linear" (default): every nn.Linear / GPT-2 Conv1D incl. the LM head
               (whose input is the final hidden state); "blocks": the hidden state entering
               each transformer block plus the final hidden state; "head": the LM head alone
               (token_pair: its exact ghost term; g is its true output gradient).
  Pairings (K(z, j), a kernel between sequences):
    token_pair: sum_l sum_{t,t'} <a_zt, a_jt'> <g_zt, g_jt'> = <Phi_z, Phi_j>,
                Phi_j = sum_l sum_t a^(l)_{j,t} (x) g_{j,t} (every layer's output gradient
                replaced by the logit gradient: the ghost gradient inner product)
    aligned:    (sum_l sum_t <a_zt, a_jt>) * (sum_t <g_zt, g_jt>)   (the paper's code)
    pooled:     (sum_l <abar_z, abar_j>) * <gbar_z, gbar_j>,
                abar = mean of a over valid positions, gbar = sum of g over positions
  value(j) = mean over z in R \\ {j} of K(z, j); include_self=True averages over R + {j}
             (the self term K(j, j) >= 0, as in the paper's code, protects high-loss sequences).

Adam-aware scoring (precondition="adam", precondition.py): the same kernels on features weighted
per coordinate, a^(l) by sqrt(c_l) and g by sqrt(r_head), where r_l c_l^T is the rank-1 fit of
Adam's P = 1/(sqrt(v_hat)+eps) for layer l: value(j) then approximates <grad l_R, P (.) grad l_j>,
the first-order change of the reference loss under an AdamW step on j.

Sign convention: value(j) approximates <grad l_R, grad l_j>, so value > 0 means an SGD step on
j lowers the reference loss (keep) and value <= threshold (default 0) is excluded. The paper
writes the same quantity with a minus sign as an "influence" (the first-order change of the
reference loss), so its negative influence = our positive value.

Modules: settings.py (LAISettings: every option, checked and resolved in one place),
pairings.py (one object per pairing: its features, exact kernel and sketch; built on
features.py, exact.py, sketch.py), capture.py (layer-input hooks), grads.py (losses, logit
gradients), scorer.py (values against a reference, over ranks via pipeline.comm), policy.py
(FilterPolicy), baselines.py (every filter: lai and the baselines), selector.py (what the
trainer calls per micro-batch), precondition.py (Adam-aware scoring), reference.py
(full-gradient and ghost references, optionally preconditioned), api.py, mixing.py (SourceMixer:
source weights from the per-source mean normalised value or, lai.mixer=loss_bandit, the
training loss; lai.mixing).
Reference R: "local" = this rank's micro-batch; "global" = the global micro-batch over the
data-parallel group; "val" = a cached held-out set (LAIScorer.set_val_reference, forward only,
combined over ranks). lai_values with ref_input_ids uses that batch as R (j not in R).

Methods: "exact" (features all-gathered across ranks, chunked Grams) and "sketch" (CountSketch
of the layer-input side and of the vocabulary side, unbiased, fp32 accumulation, hashes fixed by
`seed` on every rank and for the whole run so a cached val reference stays comparable).
Cost (T tokens per sequence, D = sum_l d_l, V vocab, B local / N global sequences,
m = sketch_dim):
  exact token_pair   min(N B T^2 (D+V), (N+B) T D V) flops per step; gathers N T (D+V) floats
  exact aligned      N B T (D+V) flops per step; gathers N T (D+V) floats
  exact pooled       D+V per token; N B (D+V) flops per step; gathers N (D+V) floats (any T)
  sketch token_pair  O(D+V) hashing + 2m flops per token; one all-reduce of m floats per step
                     (the sketched reference sum: independent of T and B)
  sketch aligned /   O(D+V) hashing per token; gathers N m floats, N B m flops per step
  pooled             (independent of T)
  include_self with sketch adds the exact self term (token_pair: B T^2 (D+V) flops).
  precondition=adam adds one multiply per feature coordinate (D + V per token), and every
  precondition_every steps a read of the rank's share of exp_avg_sq of the scored weights plus an
  all-reduce of sum_l (o_l + d_l + 1) numbers (pipeline.train.moments).
lai_values / full_gradient_values run the model in eval mode (dropout off, deterministic) and
leave parameters, .grad, requires_grad and every module's train/eval mode as found. A bf16 model
gives values within ~0.2% (relative L2) of its fp32 copy (tests/test_lai_sketch.py).
Measured costs: docs/LAI_COST.md (benchmarks/lai_cost.py); fidelity against the full-gradient
inner product and the evidence for the defaults: docs/FIDELITY.md (benchmarks/fidelity/).
"""
from .api import lai_values
from .baselines import (FILTERS, FilterInput, full_gradient_scores, loss_scores, oracle_scores,
                        random_scores)
from .capture import LAYER_SETS, LayerInputCapture
from .pairings import PAIRINGS
from .grads import logit_grads, per_sequence_loss
from .mixing import SourceMixer
from .policy import FilterPolicy
from .precondition import (PRECONDITIONS, AdamFactors, AdamPreconditioner,
                           elementwise_preconditioner)
from .reference import full_gradient_values, ghost_values
from .scorer import LAIScorer
from .selector import Selection, Selector
from .settings import DEFAULT_PAIRING, DEFAULT_SKETCH_DIM, METHODS, REFERENCES, LAISettings

__all__ = [
    "DEFAULT_PAIRING", "DEFAULT_SKETCH_DIM", "FILTERS", "LAYER_SETS", "METHODS", "PAIRINGS",
    "PRECONDITIONS", "REFERENCES",
    "AdamFactors", "AdamPreconditioner", "FilterInput", "FilterPolicy", "LAIScorer", "LAISettings",
    "LayerInputCapture", "Selection", "Selector", "SourceMixer",
    "elementwise_preconditioner", "full_gradient_scores", "full_gradient_values", "ghost_values",
    "lai_values", "logit_grads",
    "loss_scores", "oracle_scores", "per_sequence_loss", "random_scores",
]

"""LAIScorer: LAI values of this rank's sequences against a reference (train-loop API).

reference "local": this rank's micro-batch; "global": the global micro-batch of all ranks in
the group (exact and aligned/pooled sketches: per-sequence features all-gathered; token_pair
sketch: the sketched reference sum all-reduced); "val": a cached held-out reference
(set_val_reference). For local/global, j is left out of its own reference unless include_self.
precondition="adam": with `factors` set (precondition.AdamFactors, the Selector keeps them
current) the features are weighted per coordinate (precondition.py); before that, plain LAI.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from pipeline.comm import Comm
from pipeline.errors import need, need_one_of

from ..kernels.capture import LAYER_SETS, LayerInputCapture
from ..kernels.exact import reference_mean
from ..kernels.features import Features, cat_features, check_inputs
from ..kernels.grads import check_targets, compute_dtype
from ..kernels.modelio import eval_mode, model_logits
from ..kernels.pairings import PAIRINGS
from ..kernels.precondition import PRECONDITIONS, AdamFactors, InputWeights
from ..kernels.sketch import VocabRequest
from ..kernels.units import Units, unit_targets

METHODS = ("exact", "sketch")
REFERENCES = ("local", "global", "val")
DEFAULT_PAIRING = "token_pair"
DEFAULT_SKETCH_DIM = PAIRINGS[DEFAULT_PAIRING].default_sketch_dim


@dataclass
class ScoreSettings:
    """lai.score: how the LAI values are computed (read by LAIScorer and the Selector)."""
    pairing: str = DEFAULT_PAIRING     # token_pair | aligned | pooled
    method: str = "sketch"             # sketch (scales: T-independent traffic) | exact
    layers: str = "linear"             # linear | blocks | head (the LM head alone: its exact
                                       # ghost term)
    reference: str = "auto"            # auto | local | global | val; auto: val when the run
                                       # has val data (data.val_sources or a val split), else
                                       # global (docs/RESULTS.md: the clean val reference did best)
    include_self: bool = False
    sketch_dim: int | None = None      # method=sketch: sketch size (None: the pairing's default);
                                       # method=exact: must stay unset
    compile: bool = True               # method=sketch on CUDA: torch.compile the sketch kernels
    precondition: str = "none"         # none | adam: score in AdamW's step geometry, P =
                                       # 1/(sqrt(v_hat)+eps) fitted rank-1 per layer
                                       # (pipeline.lai.kernels.precondition); layers linear or head
    precondition_every: int = 10       # precondition=adam: re-read Adam's second moments every
                                       # N steps (~ v's half-life at beta2 0.95: 14 steps)
    val_refresh_every: int = 100       # reference=val: recompute the val features every N steps
    val_batches: int = 2               # reference=val: micro-batches per rank in the reference

    def check(self) -> None:
        """ValueError `lai.score.<field>: ...` naming the first bad field."""
        k = "lai.score."
        need_one_of(self.pairing, k + "pairing", tuple(PAIRINGS))
        need_one_of(self.method, k + "method", METHODS)
        need_one_of(self.layers, k + "layers", LAYER_SETS)
        need_one_of(self.reference, k + "reference", ("auto", *REFERENCES))
        need_one_of(self.precondition, k + "precondition", PRECONDITIONS)
        need(self.precondition == "none" or self.layers != "blocks", k + "precondition",
             "adam needs lai.score.layers=linear or head (a block input feeds several linear "
             "layers, each with its own Adam column weights); set lai.score.layers or "
             "lai.score.precondition=none")
        need(int(self.precondition_every) == self.precondition_every
             and self.precondition_every >= 1, k + "precondition_every",
             f"must be an int >= 1, got {self.precondition_every!r}")
        if self.method == "exact":
            need(self.sketch_dim is None, k + "sketch_dim",
                 f"{self.sketch_dim} is only used by lai.score.method=sketch (lai.score.method "
                 "is exact); remove it (lai.score.sketch_dim=null) or set lai.score.method=sketch")
        elif self.sketch_dim is not None:
            PAIRINGS[self.pairing].split(self.sketch_dim)   # ValueError naming the sketch_dim
        need(self.val_refresh_every >= 1, k + "val_refresh_every",
             f"must be >= 1, got {self.val_refresh_every}")
        need(self.val_batches >= 1, k + "val_batches", f"must be >= 1, got {self.val_batches}")

    def resolved(self, has_val: bool = False) -> ScoreSettings:
        """Checked, with sketch_dim=None -> the pairing's default (method=sketch) and
        reference=auto -> val if the run `has_val` data, else global."""
        self.check()
        sketch_dim = self.sketch_dim
        if self.method == "sketch" and sketch_dim is None:
            sketch_dim = PAIRINGS[self.pairing].default_sketch_dim
        reference = self.reference
        if reference == "auto":
            reference = "val" if has_val else "global"
        return dataclasses.replace(self, sketch_dim=sketch_dim, reference=reference)

    @property
    def is_resolved(self) -> bool:
        """Nothing left to fill in: a concrete reference, a sketch_dim exactly for sketch."""
        return self.reference != "auto" and (self.method == "sketch") != (self.sketch_dim is None)

    def key(self) -> dict:
        """The options that define the values (what a cached val reference depends on)."""
        return {k: getattr(self, k) for k in ("pairing", "method", "layers", "reference",
                                               "include_self", "sketch_dim", "precondition")}


class LAIScorer:
    """Train-loop scorer of resolved ScoreSettings `s` (ScoreSettings.resolved). Capture the
    forward with LayerInputCapture(model, scorer.s.layers), then
    `values(cap.inputs, logits, targets, group)`; all ranks of `group` call it together.
    s.compile: run the sketch kernels through torch.compile on CUDA tensors (sketch.Kernels;
    `compile_cpu`: on CPU tensors too). precondition=adam: pass
    `weights=scorer.input_weights(cap)` to `values`."""

    def __init__(self, s: ScoreSettings, seed: int = 0, *, compile_cpu: bool = False):
        if not s.is_resolved:
            raise ValueError("LAIScorer: needs resolved settings (ScoreSettings.resolved)")
        self.s, self.seed, self.compile_cpu = s, int(seed), compile_cpu
        self.kernel = PAIRINGS[s.pairing]       # features, exact kernel and sketch of the pairing
        self._config = {**s.key(), "seed": self.seed}
        self._val: dict[str, Any] | None = None
        self.factors: AdamFactors | None = None   # precondition=adam: the factors in force

    # -- features -------------------------------------------------------------------------
    def input_weights(self, cap: LayerInputCapture) -> InputWeights | None:
        """The feature weights of a capture (None: plain LAI, or no factors yet)."""
        if self.s.precondition == "none" or self.factors is None:
            return None
        return self.factors.weights(cap.model, cap.modules)

    def vocab_request(self, weights: InputWeights | None, logits: torch.Tensor
                      ) -> VocabRequest | None:
        """What the loss's forward can fold for this scorer's sketch of `logits` (their dtype
        and device; `weights`: input_weights of the capture). None for method=exact, for
        aligned (its vocabulary side is not per token), and when the vocabulary side has more
        buckets than the vocabulary has entries: folded for the whole batch at once it would
        outgrow the logits, while its own pass holds one chunk of sequences at a time."""
        if self.s.method != "sketch" or not self.kernel.per_token_vocab:
            return None
        assert self.s.sketch_dim is not None     # resolved() sets it for method=sketch
        k2 = self.kernel.split(self.s.sketch_dim)[1]
        if k2 > logits.shape[-1]:
            return None
        row = None if weights is None else weights.logit_side(compute_dtype(logits),
                                                               logits.device)
        return VocabRequest(k2, self.seed, row)

    def _local(self, inputs, logits, targets, weights=None, units: Units | None = None,
               vocab: torch.Tensor | None = None):
        """This rank's exact Features, aligned/pooled sketch Features, or token_pair sketches
        [B, sketch_dim] (with `units`: one per unit, [P, ...]; `vocab`: the filled `tokens` of
        vocab_request's request)."""
        valid = check_targets(logits, targets)
        inputs = check_inputs(inputs, logits)
        if self.s.method == "exact":
            if units is not None:
                inputs, logits, targets = _pseudo_rows(inputs, logits, targets, units)
            return self.kernel.features(inputs, logits, targets, weights)
        compiled = self.s.compile and (logits.is_cuda or self.compile_cpu)
        assert self.s.sketch_dim is not None     # resolved() sets it for method=sketch
        return self.kernel.sketch(inputs, logits, targets, valid, self.s.sketch_dim, self.seed,
                                  compiled, weights, units, vocab)

    def _reference(self, local, comm: Comm) -> dict[str, Any]:
        """Reference over all ranks of `comm` from this rank's local features (gathered) or
        token_pair sketches (their sum all-reduced)."""
        if isinstance(local, Features):
            parts = [Features(a, g) for a, g in zip(comm.gather(local.a), comm.gather(local.g))]
            return {"features": cat_features(parts), "n": sum(p.n for p in parts)}
        total = comm.all_reduce(local.sum(0))
        n = comm.all_reduce(torch.tensor([local.shape[0]], dtype=torch.int64,
                                             device=local.device))
        return {"sum": total, "n": int(n)}

    # -- values ---------------------------------------------------------------------------
    def values(self, inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
               group=None, weights: InputWeights | None = None, units: Units | None = None,
               vocab: torch.Tensor | None = None) -> torch.Tensor:
        """float64 [B_local] LAI values of this rank's sequences (targets already shifted);
        `weights`: input_weights(cap) of the capture (Adam-aware scoring); `units`: the values
        of these units instead, [P_local] (pipeline.lai.kernels.units; the reference's members are then
        units too); `vocab`: the sketch's vocabulary side as the loss folded it
        (vocab_request)."""
        local = self._local(inputs, logits, targets, weights, units, vocab)
        if self.s.reference == "val":
            if self._val is None:
                raise ValueError("reference='val': call set_val_reference(...) first")
            ref, in_ref = self._val, False
        else:
            comm = Comm.local() if self.s.reference == "local" else Comm.resolve(group)
            ref, in_ref = self._reference(local, comm), True
        if isinstance(local, Features):
            cross = self.kernel.ref_totals(local, ref["features"].to(local.a.device))
            own = self.kernel.self_kernel(local)
        else:
            cross = local @ ref["sum"].to(local.device, local.dtype)
            own = torch.linalg.vector_norm(local, dim=1).square()
        if in_ref:
            cross = cross - own
        self_k = None
        if self.s.include_self:   # sketch: exact self term, no sketch noise on the largest term
            rows = (inputs, logits, targets) if units is None else \
                _pseudo_rows(check_inputs(inputs, logits), logits, targets, units)
            self_k = own if self.s.method == "exact" else self.kernel.self_kernel(
                self.kernel.features(*rows, weights))
        return reference_mean(cross, ref["n"] - int(in_ref), self_k, self.s.include_self)

    # -- validation reference -------------------------------------------------------------
    @torch.no_grad()
    def set_val_reference(self, model: nn.Module,
                          batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          group=None) -> None:
        """Cache the reference of held-out (input_ids, targets) batches (targets shifted),
        forward only, in eval mode (restored after), combined over the ranks of `group`; with
        the factors in force (recompute it when they change)."""
        self._set_val(model, batches, Comm.resolve(group))

    def _set_val(self, model, batches, comm: Comm) -> None:
        parts = []
        with eval_mode(model):
            for input_ids, targets in batches:
                with LayerInputCapture(model, self.s.layers) as cap:
                    logits = model_logits(model, input_ids)
                parts.append(self._local(cap.inputs, logits, targets, self.input_weights(cap)))
                del cap, logits
        if not parts:
            raise ValueError("set_val_reference: no batches given")
        local = cat_features(parts) if isinstance(parts[0], Features) else torch.cat(parts)
        self._val = self._reference(local, comm)

    # -- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        val = None
        if self._val is not None:
            val = {k: (Features(v.a.cpu(), v.g.cpu()).__dict__ if isinstance(v, Features)
                       else v.cpu() if torch.is_tensor(v) else v) for k, v in self._val.items()}
        return {"config": self._config, "val": val}

    def load_state_dict(self, d: dict[str, Any]) -> bool:
        """Restore the cached val reference; returns False (and holds none) when it was made
        with other options than this scorer's, so the caller recomputes it."""
        val = d.get("val") if d.get("config") == self._config else None
        if val is not None and "features" in val:
            val = {**val, "features": Features(**val["features"])}
        self._val = val
        return val is not None or d.get("val") is None


def _pseudo_rows(inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
                 units: Units) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each unit as a sequence of its own: its row's layer inputs and logits, every target
    outside it ignored ([P, T, ...]; an input read by several layers stays one object)."""
    picked: dict[int, torch.Tensor] = {}
    rows = [picked.setdefault(id(x), x[units.rows]) for x in inputs]
    return rows, logits[units.rows], unit_targets(units, targets)

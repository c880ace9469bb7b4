"""LAIScorer: LAI values of this rank's sequences against a reference (train-loop API).

reference "local": this rank's micro-batch; "global": the global micro-batch of all ranks in
the group (exact and aligned/pooled sketches: per-sequence features all-gathered; token_pair
sketch: the sketched reference sum all-reduced); "val": a cached held-out reference
(set_val_reference). For local/global, j is left out of its own reference unless include_self.
precondition="adam": with `factors` set (precondition.AdamFactors, the Selector keeps them
current) the features are weighted per coordinate (precondition.py); before that, plain LAI.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pipeline.comm import Comm

from ..kernels.capture import LayerInputCapture
from ..kernels.exact import reference_mean
from ..kernels.features import Features, cat_features, check_inputs
from ..kernels.grads import check_targets
from ..kernels.modelio import eval_mode, model_logits
from ..kernels.pairings import PAIRINGS
from ..kernels.precondition import AdamFactors, InputWeights
from .settings import DEFAULT_PAIRING, LAISettings
from ..kernels.units import Units, unit_targets


class LAIScorer:
    """Train-loop scorer. Capture the forward with LayerInputCapture(model, scorer.layers),
    then `values(cap.inputs, logits, targets, group)`; all ranks of `group` call it together.
    The options are LAISettings fields, checked and resolved there (ValueError naming the
    field); sketch_dim is for method="sketch" only (None: the pairing's default). compile: run
    the sketch kernels through torch.compile (None: on CUDA tensors only; sketch.Kernels).
    precondition="adam": pass `weights=scorer.input_weights(cap)` to `values`."""

    def __init__(self, *, pairing: str = DEFAULT_PAIRING, method: str = "exact",
                 layers: str = "linear", reference: str = "global", include_self: bool = False,
                 sketch_dim: int | None = None, precondition: str = "none", seed: int = 0,
                 compile: bool | None = None):
        s = LAISettings(pairing=pairing, method=method, layers=layers, reference=reference,
                        include_self=bool(include_self), sketch_dim=sketch_dim,
                        precondition=precondition).resolved()
        self.pairing, self.method, self.layers = s.pairing, s.method, s.layers
        self.reference, self.include_self, self.sketch_dim = s.reference, s.include_self, \
            s.sketch_dim
        self.precondition = s.precondition
        self.seed = int(seed)
        self.compile = compile
        self.kernel = PAIRINGS[s.pairing]       # features, exact kernel and sketch of the pairing
        self._config = {**s.scoring(), "seed": self.seed}
        self._val: dict[str, Any] | None = None
        self.factors: AdamFactors | None = None   # precondition=adam: the factors in force

    @classmethod
    def from_settings(cls, s: LAISettings, seed: int) -> LAIScorer:
        """The scorer of resolved run settings `s` (lai.compile: on CUDA, or never)."""
        return cls(**s.scoring(), seed=seed, compile=None if s.compile else False)

    # -- features -------------------------------------------------------------------------
    def input_weights(self, cap: LayerInputCapture) -> InputWeights | None:
        """The feature weights of a capture (None: plain LAI, or no factors yet)."""
        if self.precondition == "none" or self.factors is None:
            return None
        return self.factors.weights(cap.model, cap.modules)

    def _local(self, inputs, logits, targets, weights=None, units: Units | None = None):
        """This rank's exact Features, aligned/pooled sketch Features, or token_pair sketches
        [B, sketch_dim] (with `units`: one per unit, [P, ...])."""
        valid = check_targets(logits, targets)
        inputs = check_inputs(inputs, logits)
        if self.method == "exact":
            if units is not None:
                inputs, logits, targets = _pseudo_rows(inputs, logits, targets, units)
            return self.kernel.features(inputs, logits, targets, weights)
        compiled = logits.is_cuda if self.compile is None else self.compile
        assert self.sketch_dim is not None       # resolved() sets it for method=sketch
        return self.kernel.sketch(inputs, logits, targets, valid, self.sketch_dim, self.seed,
                                  compiled, weights, units)

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
               group=None, weights: InputWeights | None = None, units: Units | None = None
               ) -> torch.Tensor:
        """float64 [B_local] LAI values of this rank's sequences (targets already shifted);
        `weights`: input_weights(cap) of the capture (Adam-aware scoring); `units`: the values
        of these units instead, [P_local] (pipeline.lai.kernels.units; the reference's members are then
        units too)."""
        local = self._local(inputs, logits, targets, weights, units)
        if self.reference == "val":
            if self._val is None:
                raise ValueError("reference='val': call set_val_reference(...) first")
            ref, in_ref = self._val, False
        else:
            comm = Comm.local() if self.reference == "local" else Comm.resolve(group)
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
        if self.include_self:   # sketch: exact self term, no sketch noise on the largest term
            rows = (inputs, logits, targets) if units is None else \
                _pseudo_rows(check_inputs(inputs, logits), logits, targets, units)
            self_k = own if self.method == "exact" else self.kernel.self_kernel(
                self.kernel.features(*rows, weights))
        return reference_mean(cross, ref["n"] - int(in_ref), self_k, self.include_self)

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
                with LayerInputCapture(model, self.layers) as cap:
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

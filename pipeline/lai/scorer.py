"""LAIScorer: LAI values of this rank's sequences against a reference (train-loop API).

reference "local": this rank's micro-batch; "global": the global micro-batch of all ranks in
the group (exact and aligned/pooled sketches: per-sequence features all-gathered; token_pair
sketch: the sketched reference sum all-reduced); "val": a cached held-out reference
(set_val_reference). For local/global, j is left out of its own reference unless include_self.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .capture import LayerInputCapture, check_layers
from .distributed import Comm
from .exact import ref_totals, reference_mean, self_kernel
from .features import Features, build_features, cat_features, check_inputs, check_pairing
from .grads import check_targets
from .modelio import eval_mode, model_logits
from .sketch import sketch_features, split_dim

METHODS = ("exact", "sketch")
REFERENCES = ("local", "global", "val")
DEFAULT_PAIRING = "token_pair"
# Sketch sizes from docs/FIDELITY.md (Pearson with exact, trained tiny model, global reference):
# token_pair 0.895 at 2^16, 0.948 at 2^18; aligned 0.97 at 2^18; pooled 0.98 already at 2^12.
DEFAULT_SKETCH_DIM = 1 << 18
POOLED_SKETCH_DIM = 1 << 12


def default_sketch_dim(pairing: str) -> int:
    """The sketch size used when none is given: the smallest measured size with Pearson >= 0.95."""
    return POOLED_SKETCH_DIM if pairing == "pooled" else DEFAULT_SKETCH_DIM


def _choice(name: str, value: Any, options: tuple) -> Any:
    if value not in options:
        raise ValueError(f"{name}: unknown option {value!r}, expected one of {options}")
    return value


class LAIScorer:
    """Train-loop scorer. Capture the forward with LayerInputCapture(model, scorer.layers),
    then `values(cap.inputs, logits, targets, group)`; all ranks of `group` call it together.
    sketch_dim is for method="sketch" only (None -> default_sketch_dim(pairing)); any other
    combination of options works. Options are validated here (ValueError). compile: run the
    sketch kernels through torch.compile (None: on CUDA tensors only; sketch.Kernels)."""

    def __init__(self, *, pairing: str = DEFAULT_PAIRING, method: str = "exact",
                 layers: str = "linear", reference: str = "global", include_self: bool = False,
                 sketch_dim: int | None = None, seed: int = 0, compile: bool | None = None):
        self.pairing = check_pairing(pairing)
        self.method = _choice("method", method, METHODS)
        self.layers = check_layers(layers)
        self.reference = _choice("reference", reference, REFERENCES)
        self.include_self = bool(include_self)
        if method == "sketch":
            sketch_dim = default_sketch_dim(pairing) if sketch_dim is None else sketch_dim
            split_dim(sketch_dim, pairing)
        elif sketch_dim is not None:
            raise ValueError("sketch_dim: only used by method='sketch'")
        self.sketch_dim = sketch_dim
        self.seed = int(seed)
        self.compile = compile
        self._val: dict[str, Any] | None = None

    # -- features -------------------------------------------------------------------------
    def _local(self, inputs, logits, targets):
        """This rank's exact Features, aligned/pooled sketch Features, or token_pair sketches
        [B, sketch_dim]."""
        valid = check_targets(logits, targets)
        check_inputs(inputs, logits)
        if self.method == "exact":
            return build_features(inputs, logits, targets, self.pairing)
        compiled = logits.is_cuda if self.compile is None else self.compile
        return sketch_features(inputs, logits, targets, valid, self.pairing, self.sketch_dim,
                               self.seed, compiled)

    def _reference(self, local, comm: Comm) -> dict[str, Any]:
        """Reference over all ranks of `comm` from this rank's local features (gathered) or
        token_pair sketches (their sum all-reduced)."""
        if isinstance(local, Features):
            parts = [Features(a, g) for a, g in zip(comm.gather(local.a), comm.gather(local.g))]
            return {"features": cat_features(parts), "n": sum(p.n for p in parts)}
        total = comm.all_reduce_sum(local.sum(0))
        n = comm.all_reduce_sum(torch.tensor([local.shape[0]], dtype=torch.int64,
                                             device=local.device))
        return {"sum": total, "n": int(n)}

    # -- values ---------------------------------------------------------------------------
    def values(self, inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
               group=None) -> torch.Tensor:
        """float64 [B_local] LAI values of this rank's sequences (targets already shifted)."""
        local = self._local(inputs, logits, targets)
        if self.reference == "val":
            if self._val is None:
                raise ValueError("reference='val': call set_val_reference(...) first")
            ref, in_ref = self._val, False
        else:
            comm = Comm.local() if self.reference == "local" else Comm.resolve(group)
            ref, in_ref = self._reference(local, comm), True
        if isinstance(local, Features):
            cross = ref_totals(local, ref["features"].to(local.a.device), self.pairing)
            own = self_kernel(local, self.pairing)
        else:
            cross = local @ ref["sum"].to(local.device, local.dtype)
            own = torch.linalg.vector_norm(local, dim=1).square()
        if in_ref:
            cross = cross - own
        self_k = None
        if self.include_self:   # sketch: exact self term, no sketch noise on the largest term
            self_k = own if self.method == "exact" else self_kernel(
                build_features(inputs, logits, targets, self.pairing), self.pairing)
        return reference_mean(cross, ref["n"] - int(in_ref), self_k, self.include_self)

    # -- validation reference -------------------------------------------------------------
    @torch.no_grad()
    def set_val_reference(self, model: nn.Module,
                          batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          group=None) -> None:
        """Cache the reference of held-out (input_ids, targets) batches (targets shifted),
        forward only, in eval mode (restored after), combined over the ranks of `group`."""
        self._set_val(model, batches, Comm.resolve(group))

    def _set_val(self, model, batches, comm: Comm) -> None:
        parts = []
        with eval_mode(model):
            for input_ids, targets in batches:
                with LayerInputCapture(model, self.layers) as cap:
                    logits = model_logits(model, input_ids)
                parts.append(self._local(cap.inputs, logits, targets))
                del cap, logits
        if not parts:
            raise ValueError("set_val_reference: no batches given")
        local = cat_features(parts) if isinstance(parts[0], Features) else torch.cat(parts)
        self._val = self._reference(local, comm)

    # -- checkpointing --------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"pairing": self.pairing, "method": self.method, "layers": self.layers,
                "reference": self.reference, "include_self": self.include_self,
                "sketch_dim": self.sketch_dim, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        val = None
        if self._val is not None:
            val = {k: (Features(v.a.cpu(), v.g.cpu()).__dict__ if isinstance(v, Features)
                       else v.cpu() if torch.is_tensor(v) else v) for k, v in self._val.items()}
        return {"config": self._config(), "val": val}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("config") != self._config():
            raise ValueError(f"LAIScorer.load_state_dict: saved config {d.get('config')} != "
                             f"this scorer's {self._config()}")
        val = d.get("val")
        if val is not None and "features" in val:
            val = {**val, "features": Features(**val["features"])}
        self._val = val

"""Forward hooks that capture the layer inputs a^(l) LAI needs.

Layer sets:
  "linear": the input of every nn.Linear (and transformers' GPT-2 Conv1D, which is a linear
            layer with transposed weight), LM head included, in forward order.
  "blocks": the hidden state entering each transformer block plus the final hidden state
            (the LM head's input).
  "head":   the LM head alone (its input, the final hidden state): the exact ghost term of the
            head, whose output gradient is the logit gradient (no substitution).
Layers that read the same tensor (q/k/v projections, gate/up) get the same detached tensor
object in `inputs`, so duplicates cost no memory; `unique_inputs` folds them into weights.
`modules` lists the module of each entry of `inputs` (Adam-aware scoring weights by it).
A layer may see the batch flattened to [B*T, d] rows (OPT's MLP); features.check_inputs views
those back as [B, T, d]. A mixture-of-experts model (each expert sees only the tokens routed to
it, as rows whose positions the layer input does not tell) is captured with the "blocks" set
when "linear" is asked for, with a one-line warning on stderr (once per model).
"""
from __future__ import annotations

import math
import re
import sys
import weakref
from typing import TypeAlias

import torch
from torch import nn

LAYER_SETS = ("linear", "blocks", "head")
_MOE = re.compile(r"Moe|MoE|Expert")          # HF's mixture-of-experts blocks and expert modules
_WARNED: weakref.WeakSet = weakref.WeakSet()


def _linear_types() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for the LAI math itself
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def check_layers(layers: str) -> str:
    if layers not in LAYER_SETS:
        raise ValueError(f"layers: unknown layer set {layers!r}, expected one of {LAYER_SETS}")
    return layers


def is_transposed(module: nn.Module) -> bool:
    """Whether a linear layer stores its weight as inputs x outputs (GPT-2's Conv1D)."""
    return not isinstance(module, nn.Linear)


def hooked_modules(model: nn.Module, layers: str) -> list[nn.Module]:
    """The modules whose input is captured for `layers` ("linear" | "blocks" | "head")."""
    check_layers(layers)
    if layers == "linear":
        mods = [m for m in model.modules() if isinstance(m, _linear_types())]
        if not mods:
            raise ValueError("layers='linear': the model has no nn.Linear / Conv1D layer")
        return mods
    if layers == "head":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, _linear_types()):
            raise ValueError("layers='head' needs a model whose get_output_embeddings() is a "
                             "linear layer (an HF causal LM)")
        return [head]
    blocks = decoder_blocks(model)
    if blocks is None or not hasattr(model, "get_output_embeddings") \
            or model.get_output_embeddings() is None:
        raise ValueError("layers='blocks' needs a model with a ModuleList of transformer blocks "
                         "and get_output_embeddings() (an HF causal LM)")
    return [*blocks, model.get_output_embeddings()]


def routes_tokens(model: nn.Module) -> bool:
    """Whether `model` has mixture-of-experts layers (experts that see routed tokens only)."""
    return any(_MOE.search(type(m).__name__) for m in model.modules())


def effective_layers(model: nn.Module, layers: str) -> str:
    """The layer set captured for `layers` on `model`: "blocks" instead of "linear" for a
    mixture of experts (warned once per model)."""
    if check_layers(layers) == "linear" and routes_tokens(model):
        if model not in _WARNED:
            _WARNED.add(model)
            print(f"warning: lai.score.layers=linear: {type(model).__name__} routes tokens to experts "
                  "(an expert's rows are not positions of the batch); using layers=blocks",
                  file=sys.stderr, flush=True)
        return "blocks"
    return layers


def decoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The transformer blocks of an HF causal LM (its largest ModuleList), None if it has none."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    return max(lists, key=lambda ml: sum(p.numel() for p in ml.parameters())) if lists else None


class LayerInputCapture:
    """Context manager: during forwards inside the `with`, records each hooked module's input
    (detached, no extra graph) into `inputs` (list of [B, T, d_l] or [B*T, d_l] tensors,
    forward order) and the module of each into `modules`.
    Hooks are removed on exit; `inputs` stays until `clear()` or the object is dropped."""

    def __init__(self, model: nn.Module, layers: str = "linear"):
        self.model = model
        self.layers = check_layers(layers)
        self.inputs: list[torch.Tensor] = []
        self.modules: list[nn.Module] = []
        self._seen: dict[tuple, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"LayerInputCapture: cannot find the input tensor of "
                             f"{type(module).__name__}")
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version)
        if key not in self._seen:
            self._seen[key] = x.detach()
        self.inputs.append(self._seen[key])
        self.modules.append(module)

    def __enter__(self) -> "LayerInputCapture":
        self.clear()
        layers = effective_layers(self.model, self.layers)
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                         for m in hooked_modules(self.model, layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen = {}

    def clear(self) -> None:
        self.inputs = []
        self.modules = []
        self._seen = {}


Weight: TypeAlias = float | torch.Tensor     # a scalar, or one weight per input coordinate [d]


def unique_inputs(inputs: list[torch.Tensor], cols: list[torch.Tensor] | None = None
                  ) -> list[tuple[torch.Tensor, Weight]]:
    """Distinct tensors of `inputs` with the weight that makes one copy stand for all its
    readers: k layers reading input a contribute sum_l <a, a'>_{c_l} = <w a, w a'> with
    w = sqrt(k) (no `cols`: c_l = 1), or per coordinate w = sqrt(sum_l c_l) with `cols[i]` the
    column weights c of the layer that read inputs[i] (Adam-aware scoring, precondition.py)."""
    groups: dict[int, list] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(id(x), [x, []])[1].append(i)
    if cols is None:
        return [(x, math.sqrt(len(idx))) for x, idx in groups.values()]
    if len(cols) != len(inputs):
        raise ValueError(f"cols: {len(cols)} column weights for {len(inputs)} captured inputs")
    out = []
    for x, idx in groups.values():
        if any(cols[i].shape != x.shape[-1:] for i in idx):
            raise ValueError(f"cols: column weights of shape {tuple(cols[idx[0]].shape)} for an "
                             f"input of width {x.shape[-1]}")
        out.append((x, torch.stack([cols[i] for i in idx]).sum(0).sqrt()))
    return out


def scaled(x: torch.Tensor, w: Weight) -> torch.Tensor:
    """x * w (w a scalar or per coordinate of x's last dim, cast to x's dtype and device)."""
    if isinstance(w, torch.Tensor):
        return x * w.to(x.device, x.dtype)
    return x * w if w != 1.0 else x

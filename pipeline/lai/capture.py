"""Forward hooks that capture the layer inputs a^(l) LAI needs.

Layer sets:
  "linear": the input of every nn.Linear (and transformers' GPT-2 Conv1D, which is a linear
            layer with transposed weight), LM head included, in forward order.
  "blocks": the hidden state entering each transformer block plus the final hidden state
            (the LM head's input).
Layers that read the same tensor (q/k/v projections, gate/up) get the same detached tensor
object in `inputs`, so duplicates cost no memory; `unique_inputs` folds them into weights.
"""
from __future__ import annotations

import math

import torch
from torch import nn

LAYER_SETS = ("linear", "blocks")


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


def hooked_modules(model: nn.Module, layers: str) -> list[nn.Module]:
    """The modules whose input is captured for `layers` ("linear" | "blocks")."""
    check_layers(layers)
    if layers == "linear":
        mods = [m for m in model.modules() if isinstance(m, _linear_types())]
        if not mods:
            raise ValueError("layers='linear': the model has no nn.Linear / Conv1D layer")
        return mods
    blocks = decoder_blocks(model)
    if blocks is None or not hasattr(model, "get_output_embeddings") \
            or model.get_output_embeddings() is None:
        raise ValueError("layers='blocks' needs a model with a ModuleList of transformer blocks "
                         "and get_output_embeddings() (an HF causal LM)")
    return [*blocks, model.get_output_embeddings()]


def decoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The transformer blocks of an HF causal LM (its largest ModuleList), None if it has none."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    return max(lists, key=lambda ml: sum(p.numel() for p in ml.parameters())) if lists else None


class LayerInputCapture:
    """Context manager: during forwards inside the `with`, records each hooked module's input
    (detached, no extra graph) into `inputs` (list of [B, T, d_l] tensors, forward order).
    Hooks are removed on exit; `inputs` stays until `clear()` or the object is dropped."""

    def __init__(self, model: nn.Module, layers: str = "linear"):
        self.model = model
        self.layers = check_layers(layers)
        self.inputs: list[torch.Tensor] = []
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

    def __enter__(self) -> "LayerInputCapture":
        self.clear()
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                         for m in hooked_modules(self.model, self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen = {}

    def clear(self) -> None:
        self.inputs = []
        self._seen = {}


def unique_inputs(inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, float]]:
    """Distinct tensors of `inputs` with weight sqrt(multiplicity): k layers reading the same
    input contribute k * <a, a'>, i.e. one copy scaled by sqrt(k)."""
    counts: dict[int, list] = {}
    for x in inputs:
        counts.setdefault(id(x), [x, 0])[1] += 1
    return [(x, math.sqrt(k)) for x, k in counts.values()]

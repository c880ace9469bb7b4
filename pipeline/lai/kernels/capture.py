"""Forward hooks that capture the layer inputs a^(l) LAI needs.

Layer sets:
  "linear": the input of every nn.Linear (and transformers' GPT-2 Conv1D, which is a linear
            layer with transposed weight), LM head included, in module order (HF's causal LMs
            register their layers in the order the forward calls them).
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
The hooks are installed on a model once and stay, off between captures, so that torch.compile
traces them into compiled blocks (model.compile): a compiled model records through its graph.
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


class _Slot:
    """The pre-hook of one captured module: while its hooks are on, keeps the module's input
    (detached: no extra graph)."""

    def __init__(self, hooks: "_Hooks"):
        self.hooks = hooks
        self.seen: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs):
        if self.hooks.on:
            x = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"LayerInputCapture: cannot find the input tensor of "
                                 f"{type(module).__name__}")
            self.seen.append(x.detach())


class _Hooks:
    """The pre-hooks of one layer set on one model, installed once and kept: off, each is one
    attribute read. Kept rather than added per capture so that torch.compile traces them into
    a compiled block's graph on its first call (hooks added to a module already compiled are
    not run by its graph). Each slot keeps its own list, so the compiled graph's guards see the
    same state (on or off, every list empty) at every block and every step: no recompiles."""

    def __init__(self, model: nn.Module, layers: str):
        self.on = False
        self.modules = hooked_modules(model, effective_layers(model, layers))
        self.slots = [_Slot(self) for _ in self.modules]
        for m, slot in zip(self.modules, self.slots):
            m.register_forward_pre_hook(slot, with_kwargs=True)

    def take(self) -> tuple[list[nn.Module], list[torch.Tensor]]:
        """(module of each captured input, the inputs) in module order, each recorded tensor
        once: inputs with the same storage, shape, strides and dtype (the q/k/v projections'
        one input) become one object; the slots are emptied."""
        mods: list[nn.Module] = []
        inputs: list[torch.Tensor] = []
        same: dict[tuple, torch.Tensor] = {}
        for m, slot in zip(self.modules, self.slots):
            for x in slot.seen:
                key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)
                mods.append(m)
                inputs.append(same.setdefault(key, x))
            slot.seen = []
        return mods, inputs


_INSTALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def install_hooks(model: nn.Module, layers: str = "linear") -> _Hooks:
    """The capture hooks of `layers` on `model`, installed on the first call. Install them
    before a compiled model's first forward (the trainer does): installed later, they make
    torch.compile drop every compiled graph (torch._dynamo.reset), which were traced without
    them, so the next forwards trace them in."""
    per_model = _INSTALLED.setdefault(model, {})
    if layers not in per_model:
        per_model[check_layers(layers)] = _Hooks(model, layers)
        if has_compiled_parts(model):
            torch._dynamo.reset()
    return per_model[layers]


def has_compiled_parts(model: nn.Module) -> bool:
    """Whether a module of `model` runs a torch.compile'd forward (model.compile's blocks,
    nn.Module.compile)."""
    return any(hasattr(m.forward, "_torchdynamo_orig_callable")
               or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


class LayerInputCapture:
    """Context manager: during forwards inside the `with`, records each hooked module's input
    (detached, no extra graph). On exit `inputs` holds them (list of [B, T, d_l] or [B*T, d_l]
    tensors, in module order: the forward order of HF's causal LMs; one object per distinct
    tensor) and `modules` the module of each; they stay until `clear()` or the object is
    dropped. The hooks themselves stay on the model, off (install_hooks), so a compiled model
    records through its graph."""

    def __init__(self, model: nn.Module, layers: str = "linear"):
        self.model = model
        self.layers = check_layers(layers)
        self.inputs: list[torch.Tensor] = []
        self.modules: list[nn.Module] = []
        self._hooks: _Hooks | None = None

    def __enter__(self) -> "LayerInputCapture":
        self.clear()
        hooks = install_hooks(self.model, self.layers)
        if hooks.on:
            raise RuntimeError("LayerInputCapture: a capture of this model and layer set is "
                               "already open")
        hooks.on, self._hooks = True, hooks
        return self

    def __exit__(self, *exc) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.on = False
            self.modules, self.inputs = hooks.take()

    def clear(self) -> None:
        self.inputs = []
        self.modules = []


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

"""Model FLOPs of a causal LM training step, achieved TFLOP/s and MFU.

Convention (PaLM, appendix B; what nanoGPT and torchtitan report), per *trained token*, forward +
backward:

    flops_per_token = 6 * N + 12 * L * d * T

- N: parameters that take part in a matrix multiply (full sizes, also under ZeRO-3) = every >= 2-D weight except embedding
  *lookups* (token / position embeddings); an LM head tied to the token embedding still counts
  (its matmul runs). Biases and norms are element-wise and left out. Forward costs 2 FLOPs per
  weight and token (multiply + add), backward twice that (input and weight gradients): 6 N.
- 12 L d T: attention scores Q K^T and the weighted sum A V, each 2 * T * d FLOPs per token and
  layer forward (L layers, width d, sequence length T), times 3 for forward + backward. It is the
  full T x T product, not halved for the causal mask, matching the published convention and what
  eager attention actually computes.

These are *model* FLOPs: activation recomputation, LAI scoring and optimizer work are overhead,
so MFU = achieved model FLOP/s / peak FLOP/s goes down when they cost time -- as it should.
"""
from __future__ import annotations

import torch
from torch import nn


def matmul_params(model: nn.Module) -> int:
    """Number of weights taking part in matmuls: >= 2-D parameters that are not embedding lookups,
    plus a tied LM head (shared with an embedding, so not counted as a parameter of its own)."""
    lookup = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    n = sum(_shape(p).numel() for p in model.parameters()
            if len(_shape(p)) >= 2 and id(p) not in lookup)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in lookup:
        n += _shape(head.weight).numel()
    return n


def _shape(p: nn.Parameter) -> torch.Size:
    """The full shape, also of a ZeRO-3 partitioned parameter (whose own shape is [0])."""
    return getattr(p, "ds_shape", p.shape)


def flops_per_token(n_matmul_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """Training (forward + backward) model FLOPs per token: 6 N + 12 L d T (see module doc)."""
    return 6.0 * n_matmul_params + 12.0 * n_layer * d_model * seq_len


def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """`flops_per_token` of an HF causal LM (reads `config.num_hidden_layers` and
    `config.hidden_size`, which every HF decoder config maps to its own names)."""
    cfg = model.config
    return flops_per_token(matmul_params(model), cfg.num_hidden_layers, cfg.hidden_size, seq_len)


def achieved_tflops(tokens_per_s: float, flops_per_tok: float) -> float:
    """Model TFLOP/s for a throughput of `tokens_per_s` trained tokens per second."""
    return tokens_per_s * flops_per_tok / 1e12


def mfu(tokens_per_s: float, flops_per_tok: float, peak_tflops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s of `n_devices` devices together
    (`tokens_per_s` is their total) over `n_devices * peak_tflops` (per-device peak, e.g. 989 for
    an H100 SXM in bf16 dense)."""
    if peak_tflops <= 0 or n_devices <= 0:
        raise ValueError(f"mfu: peak_tflops ({peak_tflops}) and n_devices ({n_devices}) must be > 0")
    return achieved_tflops(tokens_per_s, flops_per_tok) / (peak_tflops * n_devices)


"""HF causal LMs built from the run config (`AutoModelForCausalLM.from_config`; no downloads).

    model = build_model(cfg.model, vocab_size=manifest vocab, seq_len=cfg.data.seq_len, ...)

Families: llama, gpt_neox, gpt2, gpt_neo; or any causal LM folder with `model.init_from`
(pipeline.train.hf.init_from). `model.compile` compiles each block's forward with
torch.compile (regional compilation: one graph serves every block; hooks on the blocks run
eagerly around it, hooks inside it, such as LAI's capture of the linear layers, are traced in).
With `model.activation_checkpointing` too, the compiled forward holds transformers'
checkpoint, whose forward side effects (its output recording, LAI's capture) the recompute in
the backward does not replay (torch._dynamo's skip_fwd_side_effects_in_bwd_under_checkpoint;
without it the side effects are a graph break that leaves every block eager). Dropout is off
(pretraining at this scale rarely uses it, and it would make LAI's forward differ from the
trained one). Weights come from the model's own initializer under the torch RNG state the
caller seeded.
"""
from __future__ import annotations

import sys

import torch
import transformers
from torch import nn

from pipeline.config import ModelConfig
from pipeline.lai.kernels.capture import decoder_blocks
from pipeline.train.hf.init_from import load_model


def hf_config(m: ModelConfig, *, vocab_size: int, seq_len: int, bos_id: int = -1,
              eos_id: int = -1, pad_id: int = -1) -> transformers.PretrainedConfig:
    """The transformers config of family `m.family`; max positions = `seq_len`."""
    ids = {k: (v if v >= 0 else None) for k, v in
           (("bos_token_id", bos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id))}
    inter = m.intermediate
    common = dict(vocab_size=vocab_size, tie_word_embeddings=m.tie_word_embeddings,
                  use_cache=False, **ids)
    if m.family == "llama":
        return transformers.LlamaConfig(
            hidden_size=m.hidden, num_hidden_layers=m.n_layer, num_attention_heads=m.n_head,
            num_key_value_heads=m.n_kv_head or m.n_head,
            intermediate_size=inter or _multiple(8 * m.hidden // 3, 64),
            max_position_embeddings=seq_len, rope_theta=m.rope_theta, **common)
    if m.family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=m.hidden, num_hidden_layers=m.n_layer, num_attention_heads=m.n_head,
            intermediate_size=inter or 4 * m.hidden, max_position_embeddings=seq_len,
            rotary_emb_base=m.rope_theta, hidden_dropout=0.0, attention_dropout=0.0, **common)
    if m.family == "gpt2":
        return transformers.GPT2Config(
            n_embd=m.hidden, n_layer=m.n_layer, n_head=m.n_head, n_inner=inter or None,
            n_positions=seq_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if m.family == "gpt_neo":
        return transformers.GPTNeoConfig(
            hidden_size=m.hidden, num_layers=m.n_layer, num_heads=m.n_head,
            intermediate_size=inter or None, max_position_embeddings=seq_len,
            attention_types=[[["global", "local"], max(1, m.n_layer // 2)]]
            if m.n_layer % 2 == 0 else [[["global"], m.n_layer]],
            resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0, **common)
    raise ValueError(f"model.family: unknown family {m.family!r}")


def _multiple(n: int, k: int) -> int:
    return max(k, (n + k - 1) // k * k)


def build_model(m: ModelConfig, *, vocab_size: int, seq_len: int, bos_id: int = -1,
                eos_id: int = -1, pad_id: int = -1) -> nn.Module:
    """A freshly initialised causal LM in fp32 (DeepSpeed casts to bf16 if configured), or the
    one in `m.init_from` (pipeline.train.hf.init_from; the caller checked that it fits the data)."""
    if m.init_from:
        model = load_model(m.init_from)
    else:
        cfg = hf_config(m, vocab_size=vocab_size, seq_len=seq_len, bos_id=bos_id,
                        eos_id=eos_id, pad_id=pad_id)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    if m.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.compile:                 # regional: each block's forward (see the module doc)
        if m.activation_checkpointing:
            _compile_checkpointed_blocks()
        for block in decoder_blocks(model) or ():
            block.forward = torch.compile(block.forward)
    model.train()
    return model


def _compile_checkpointed_blocks() -> None:
    """Let torch.compile trace transformers' checkpointed block forward: its forward side
    effects are not replayed in the recompute (see the module doc). A torch without that
    setting runs the blocks eager, with a warning on stderr."""
    config = torch._dynamo.config
    if hasattr(config, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    else:
        print(f"warning: model.compile with model.activation_checkpointing: torch "
              f"{torch.__version__} cannot compile the checkpointed blocks; they run eager",
              file=sys.stderr, flush=True)

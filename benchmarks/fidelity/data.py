"""The model, the plain AdamW loop that trains it, and the fixed scored batches."""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.lib.corruption import CORRUPTIONS, Corruptor


def build_model(vocab: int, seq_len: int, hidden: int, layers: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=seq_len + 1, tie_word_embeddings=False,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg).float()


def scored_batches(ds, corruptor: Corruptor, n_batches: int, batch: int, frac: float, seed: int):
    """Fixed batches of train sequences from the end of the epoch (never trained on), with
    round(frac*batch) positions per batch corrupted, types round-robin. Returns a list of
    (x int64 [B, T+1], kinds list[str] with "clean" for clean positions)."""
    rng = np.random.default_rng(seed)
    out = []
    n_corrupt = int(round(frac * batch))
    for b in range(n_batches):
        ids = [ds.samples_per_epoch - 1 - (b * batch + i) for i in range(batch)]
        x = np.stack([ds.sample(i) for i in ids]).astype(np.int64)
        kinds = ["clean"] * batch
        for k, pos in enumerate(sorted(rng.choice(batch, size=n_corrupt, replace=False))):
            kind = CORRUPTIONS[(b * n_corrupt + k) % len(CORRUPTIONS)]
            x[pos] = corruptor(kind, x[pos], rng, offset=None)
            kinds[pos] = kind
        out.append((torch.from_numpy(x), kinds))
    return out


def train_steps(model, opt, ds, start: int, stop: int, batch: int, lr: float):
    """Plain AdamW loop over packed sequences; sample ids step*batch ... (deterministic)."""
    model.train()
    for step in range(start, stop):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        x = torch.from_numpy(np.stack([ds.sample(step * batch + i) for i in range(batch)]).astype(np.int64))
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return float(loss.detach()) if stop > start else float("nan")

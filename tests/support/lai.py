"""Shared helpers for the LAI tests (no tests here): tiny HF models, explicit constructions, and
the relative error the exact tests bound."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.lai.kernels.capture import hooked_modules
from pipeline.lai.kernels.grads import logit_grads, shift_labels

ARCHS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0,
                 embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128),
}


# layers that see the batch flattened to [B*T, d] (OPT's MLP), other attention / MLP variants,
# and a mixture of experts (Mixtral: each expert sees only the tokens routed to it)
MORE_ARCHS = {
    "opt": dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                max_position_embeddings=128, word_embed_proj_dim=32, dropout=0.0,
                attention_dropout=0.0),
    "gptj": dict(n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=128, resid_pdrop=0.0,
                 embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128),
    "mistral": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128),
    "mixtral": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                    num_local_experts=4, num_experts_per_tok=2),
}


def tiny_model(arch: str = "gpt2", vocab: int = 128, dtype=torch.float64, seed: int = 0,
               **overrides):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(arch, vocab_size=vocab,
                               **{**ARCHS.get(arch, MORE_ARCHS.get(arch)), **overrides})
    # eager experts: the default grouped matmul has no float64 kernel
    extra = {"experts_implementation": "eager"} if arch == "mixtral" else {}
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", **extra)
    return model.to(dtype).eval()


def synthetic_corpus(n: int, t: int, vocab: int, noise_frac: float = 0.2, seed: int = 0):
    """[n, t] token sequences of one fixed language (a sparse Markov chain: 4 successors per
    token), with a `noise_frac` share of sequences replaced by uniform random tokens (the
    harmful ones); `seed` draws the samples. Returns (ids, is_noise)."""
    succ = torch.randint(0, vocab, (vocab, 4), generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.empty(n, t, dtype=torch.int64)
    ids[:, 0] = torch.randint(0, vocab, (n,), generator=gen)
    for i in range(1, t):
        pick = torch.randint(0, 4, (n,), generator=gen)
        ids[:, i] = succ[ids[:, i - 1], pick]
    noise = torch.rand(n, generator=gen) < noise_frac
    ids[noise] = torch.randint(0, vocab, (int(noise.sum()), t), generator=gen)
    return ids, noise


def trained_tiny_model(steps: int = 40, arch: str = "gpt2", vocab: int = 256, t: int = 32,
                       hidden: int = 64, dtype=torch.float32, seed: int = 0):
    """A tiny model briefly trained (AdamW) on the clean part of the synthetic corpus."""
    overrides = {"n_embd": hidden, "n_positions": max(t, 128)} if arch == "gpt2" else {
        "hidden_size": hidden, "intermediate_size": 4 * hidden,
        "max_position_embeddings": max(t, 128)}
    model = tiny_model(arch, vocab=vocab, dtype=torch.float32, seed=seed, **overrides).train()
    ids, noise = synthetic_corpus(steps * 16, t, vocab, noise_frac=0.0, seed=seed + 100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for s in range(steps):
        x = ids[s * 16:(s + 1) * 16]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.to(dtype).eval()


def batch(b: int, t: int, vocab: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=gen)


def explicit_features(model, input_ids, labels=None, factors=None, layers="linear"):
    """Per-layer inputs (no dedupe; a layer that saw the batch as [B*T, d] rows has row
    b * T + t for position t of sequence b), logit grads and valid mask, by hand. `factors`
    (AdamFactors): each layer's input times sqrt(its c), g times sqrt(r of the LM head)."""
    labels = input_ids if labels is None else labels
    targets = shift_labels(labels)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].detach())))
             for m in hooked_modules(model, layers)]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    for h in hooks:
        h.remove()
    valid = (targets != -100).to(logits.dtype)
    g = logit_grads(logits, targets)
    names = {m: n for n, m in model.named_modules()}
    inputs = []
    for m, x in seen:
        x = x.reshape(*input_ids.shape, -1) * valid.unsqueeze(-1)
        if factors is not None:
            x = x * factors.factors[names[m]][1].sqrt()
        inputs.append(x)
    if factors is not None:
        g = g * factors.factors[factors.head][0].sqrt()
    return inputs, g, valid


def explicit_kernel(model, input_ids, pairing, labels=None, factors=None, layers="linear"):
    """K [B, B] built literally from the definitions (pseudo-gradients for token_pair)."""
    inputs, g, valid = explicit_features(model, input_ids, labels, factors, layers)
    if pairing == "token_pair":
        phi = torch.cat([torch.einsum("btd,btv->bdv", a, g).flatten(1) for a in inputs], 1)
        return phi @ phi.T
    if pairing == "aligned":
        ka = sum(torch.einsum("ztd,jtd->zj", a, a) for a in inputs)
        return ka * torch.einsum("ztv,jtv->zj", g, g)
    n = valid.sum(1, keepdim=True)
    abar = [a.sum(1) / n for a in inputs]
    ka = sum(x @ x.T for x in abar)
    gbar = g.sum(1)
    return ka * (gbar @ gbar.T)


def block_kernel(model, input_ids, blocks) -> torch.Tensor:
    """token_pair K [B, B] built literally from the input of each module in `blocks` (the
    transformer blocks, then the LM head: the hidden state entering each block + the final one)."""
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a, kw: inputs.append(
        (a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True) for m in blocks]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    for h in hooks:
        h.remove()
    assert len(inputs) == len(blocks)
    targets = shift_labels(input_ids)
    g = logit_grads(logits, targets)
    mask = (targets != -100).to(g.dtype).unsqueeze(-1)
    phi = torch.cat([torch.einsum("btd,btv->bdv", a * mask, g).flatten(1) for a in inputs], 1)
    return phi @ phi.T


def per_sample_grads(model, ids, params):
    """[B, P] by one backward per sequence (independent of torch.func)."""
    from pipeline.lai import per_sequence_loss
    targets = shift_labels(ids)
    rows = []
    for j in range(ids.shape[0]):
        loss = per_sequence_loss(model(input_ids=ids[j:j + 1]).logits, targets[j:j + 1])[0]
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def random_factors(model, layers="linear", seed=0):
    """AdamFactors with random positive r, c (r of mean 1) for `model`'s scored layers."""
    from pipeline.lai.kernels.precondition import AdamFactors, scored_layers
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in scored_layers(model, layers):
        o, d = m.weight.shape if isinstance(m, torch.nn.Linear) else m.weight.shape[::-1]
        r = torch.rand(o, generator=gen, dtype=torch.float64) + 0.2
        out[name] = (r / r.mean(), torch.rand(d, generator=gen, dtype=torch.float64) * 3 + 0.1)
    names = {m: n for n, m in model.named_modules()}
    return AdamFactors(out, names[model.get_output_embeddings()])


def loo_mean(k: torch.Tensor, include_self: bool = False) -> torch.Tensor:
    """value_j from a full kernel matrix over the batch as its own reference."""
    n = k.shape[0]
    if include_self:
        return k.sum(0) / n
    return (k.sum(0) - k.diagonal()) / (n - 1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()

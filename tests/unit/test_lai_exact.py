"""Exact LAI values equal their explicit definitions (float64, tiny GPT-2 / GPT-NeoX / Llama)."""
import pytest
import torch
import torch.nn.functional as F

import pipeline.lai.kernels.exact as exact
from pipeline.lai import (LAIScorer, LayerInputCapture, lai_values, logit_grads,
                          per_sequence_loss)
from pipeline.lai import ScoreSettings
from pipeline.lai.kernels.grads import shift_labels
from support.lai import ARCHS, batch, block_kernel, explicit_kernel, loo_mean, rel_err, tiny_model

PAIRINGS = ["token_pair", "aligned", "pooled"]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_exact_equals_explicit_construction(arch, pairing):
    model = tiny_model(arch)
    ids = batch(5, 12, 128)
    labels = ids.clone()
    labels[1, :4] = -100                      # ignored positions are restricted away
    k = explicit_kernel(model, ids, pairing, labels)
    for include_self in (False, True):
        v = lai_values(model, ids, labels, pairing=pairing, include_self=include_self)
        assert v.dtype == torch.float64 and v.shape == (5,)
        assert rel_err(v, loo_mean(k, include_self)) < 1e-9


@pytest.mark.parametrize("route", ["gram", "phi"])
def test_token_pair_both_contractions(monkeypatch, route):
    model = tiny_model("llama")
    ids = batch(4, 10, 128)
    monkeypatch.setattr(exact, "token_pair_route", lambda *a: route)
    monkeypatch.setattr(exact, "BLOCK", 64)    # force many chunks
    v = lai_values(model, ids, pairing="token_pair")
    assert rel_err(v, loo_mean(explicit_kernel(model, ids, "token_pair"))) < 1e-9


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_separate_reference_batch(pairing):
    model = tiny_model("gpt2")
    ids, ref = batch(3, 12, 128, seed=1), batch(4, 8, 128, seed=2)
    both = torch.cat([ids, torch.cat([ref, torch.zeros(4, 4, dtype=torch.long)], 1)])
    labels = both.clone()
    labels[3:, 8:] = -100                     # ref rows padded to T=12 and ignored there
    k = explicit_kernel(model, both, pairing, labels)[:3]   # rows: query j, cols: all z
    v = lai_values(model, ids, ref_input_ids=ref, pairing=pairing)
    assert rel_err(v, k[:, 3:].sum(1) / 4) < 1e-9
    v_self = lai_values(model, ids, ref_input_ids=ref, pairing=pairing, include_self=True)
    assert rel_err(v_self, (k[:, 3:].sum(1) + k[:, :3].diagonal()) / 5) < 1e-9


BLOCKS = {"gpt2": lambda m: [*m.transformer.h, m.lm_head],
          "gpt_neox": lambda m: [*m.gpt_neox.layers, m.lm_head],
          "llama": lambda m: [*m.model.layers, m.lm_head]}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_blocks_layer_set_is_block_inputs_plus_final_hidden(arch):
    model = tiny_model(arch)
    ids = batch(4, 12, 128)
    v = lai_values(model, ids, layers="blocks")
    assert rel_err(v, loo_mean(block_kernel(model, ids, BLOCKS[arch](model)))) < 1e-9


def test_logit_grads_and_loss_match_autograd():
    model = tiny_model("gpt_neox")
    ids = batch(3, 9, 128)
    targets = shift_labels(ids)
    targets[0, 2] = -100
    logits = model(input_ids=ids).logits.detach().requires_grad_(True)
    losses = per_sequence_loss(logits, targets)
    for j in range(3):
        (auto,) = torch.autograd.grad(losses[j], logits, retain_graph=True)
        assert torch.allclose(logit_grads(logits, targets)[j], auto[j], rtol=0, atol=1e-13)
    ce = F.cross_entropy(logits[1], targets[1], ignore_index=-100)
    assert torch.allclose(losses[1], ce)


def test_train_loop_api_matches_lai_values():
    model = tiny_model("llama")
    ids = batch(4, 12, 128)
    with LayerInputCapture(model, "linear") as cap:
        logits = model(input_ids=ids).logits
    assert all(not x.requires_grad for x in cap.inputs)
    assert len(cap.inputs) == 2 * 7 + 1       # q k v o gate up down per block + LM head
    scorer = LAIScorer(ScoreSettings(pairing="token_pair", method="exact", layers="linear",
                                     reference="local", include_self=False, sketch_dim=None).resolved(), 0)
    v = scorer.values(cap.inputs, logits, shift_labels(ids))
    assert rel_err(v, lai_values(model, ids)) < 1e-12


def test_leaves_model_state_as_found():
    model = tiny_model("gpt2").train()
    model.transformer.h[0].mlp.eval()
    model.lm_head.weight.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    ids = batch(3, 8, 128)
    from pipeline.lai import full_gradient_values, ghost_values
    for fn in (lai_values, full_gradient_values, ghost_values):
        fn(model, ids)
        assert {n: m.training for n, m in model.named_modules()} == modes
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n])
            assert p.requires_grad == (n != "lm_head.weight" and n != "transformer.wte.weight")
            if p.requires_grad:
                assert torch.equal(p.grad, torch.full_like(p, 0.5))


@pytest.mark.parametrize("call, message", [
    (lambda m: lai_values(m, batch(3, 8, 128), batch(3, 7, 128)), "shape"),
    (lambda m: lai_values(m, batch(3, 8, 128), torch.full((3, 8), -100)), "all labels"),
    (lambda m: lai_values(m, torch.zeros(0, 8, dtype=torch.long)), "empty"),
    (lambda m: lai_values(m, batch(3, 8, 128), pairing="pairs"), "pairing"),
    (lambda m: lai_values(m, batch(3, 8, 128), method="fast"), "method"),
    (lambda m: lai_values(m, batch(3, 8, 128), layers="all"), "layers"),
    (lambda m: lai_values(m, batch(3, 8, 128), sketch_dim=64), "sketch_dim"),
    (lambda m: lai_values(m, batch(3, 8, 128), method="sketch", sketch_dim=2), "sketch_dim"),
    (lambda m: lai_values(m, batch(1, 8, 128)), "at least 2"),
    (lambda m: lai_values(m, batch(2, 8, 128), torch.cat(
        [batch(1, 8, 128), torch.full((1, 8), -100)])), "no valid target"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_model("gpt2"))


@pytest.mark.parametrize("layers", ["linear", "blocks"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_capture_keeps_only_what_autograd_saves(arch, layers):
    """In a training forward every captured input is a tensor autograd saves for the backward
    anyway (the layer's own input), so capturing costs no activation memory (without activation
    checkpointing, which frees those: there use layers=blocks, whose inputs it keeps)."""
    from pipeline.lai import LayerInputCapture
    model = tiny_model(arch, dtype=torch.float32).train()
    saved = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with LayerInputCapture(model, layers) as cap:
            model(input_ids=batch(2, 8, 128))
    assert cap.inputs
    kept = {x.untyped_storage().data_ptr() for x in cap.inputs}
    assert kept <= saved, f"{len(kept - saved)} captured input(s) not held by autograd"

"""Reference scorers equal brute-force per-sample autograd; the loss / random baseline scores."""
import pytest
import torch

from pipeline.lai import full_gradient_values, ghost_values, loss_scores, random_scores
from pipeline.lai.kernels.capture import hooked_modules
from support.lai import batch, loo_mean, per_sample_grads, rel_err, tiny_model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_full_gradient_equals_per_sample_autograd(arch):
    model = tiny_model(arch)
    ids, ref = batch(4, 10, 128, seed=3), batch(3, 10, 128, seed=4)
    params = [p for p in model.parameters() if p.requires_grad]
    q = per_sample_grads(model, ids, params)
    r = per_sample_grads(model, ref, params)
    assert rel_err(full_gradient_values(model, ids), loo_mean(q @ q.T)) < 1e-9
    assert rel_err(full_gradient_values(model, ids, include_self=True),
                   loo_mean(q @ q.T, include_self=True)) < 1e-9
    assert rel_err(full_gradient_values(model, ids, ref_input_ids=ref), (q @ r.T).mean(1)) < 1e-9


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_ghost_equals_per_sample_linear_layer_grads(arch):
    model = tiny_model(arch, tie_word_embeddings=False)
    ids = batch(4, 10, 128, seed=5)
    params = [p for m in hooked_modules(model, "linear") for p in
              ([m.weight] + ([m.bias] if m.bias is not None else []))]
    q = per_sample_grads(model, ids, params)
    assert rel_err(ghost_values(model, ids), loo_mean(q @ q.T)) < 1e-9


def test_loss_scores_kth_highest_minus_loss():
    losses = torch.tensor([1.0, 3.0, 2.0, 10.0])
    assert torch.equal(loss_scores(losses, 0.5), torch.tensor([2.0, 0.0, 1.0, -7.0],
                                                             dtype=torch.float64))
    assert (loss_scores(losses, 0.0) > 0).all()              # k = 0: nothing to exclude


def test_random_scores_depend_on_seed_and_seq_id_only():
    import numpy as np
    ids = torch.tensor([7, 3, 11])
    a = random_scores(ids, seed=1, rate=0.25)
    assert torch.equal(a, random_scores(ids, seed=1, rate=0.25)) and a.dtype == torch.float64
    assert torch.equal(a[1:], random_scores(ids[1:], seed=1, rate=0.25))   # per sequence
    assert not torch.equal(a, random_scores(ids, seed=2, rate=0.25))
    want = [np.random.default_rng([1, i]).random() - 0.25 for i in (7, 3, 11)]
    assert a.tolist() == want

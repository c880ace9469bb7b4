"""Adam-aware scoring against brute force: the rank-1 fit, the weighted kernels of every pairing,
the LM head's exact ghost term (layers=head), the preconditioned references, the unbiased
sketch, the moments of a real AdamW, the Selector's refresh cadence and state."""
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from pipeline.lai import (AdamFactors, LAISettings, Selector, elementwise_preconditioner,
                          full_gradient_values, ghost_values, lai_values, per_sequence_loss)
from pipeline.lai import ScoreSettings
from pipeline.lai.kernels.capture import hooked_modules
from pipeline.lai.kernels.grads import shift_labels
from pipeline.lai.kernels.precondition import fragment_sums, optimizer_moments, scored_layers
from support.lai import (ARCHS, batch, explicit_kernel, loo_mean, per_sample_grads,
                         random_factors, rel_err, tiny_model)

PAIRINGS = ["token_pair", "aligned", "pooled"]


# ---------------------------------------------------------------- the rank-1 fit

def test_fragment_sums_of_any_split_add_up_to_the_whole():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    for cuts in ([0, 35], [0, 3, 4, 12, 13, 35], [0, 5, 10, 35], [0, 2, 33, 35]):
        row, col = torch.zeros(7, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
        for a, b in zip(cuts, cuts[1:]):
            r, c = fragment_sums(p.flatten()[a:b], a, 7, 5)
            row, col = row + r, col + c
        torch.testing.assert_close(row, p.sum(1), rtol=1e-14, atol=0)
        torch.testing.assert_close(col, p.sum(0), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="outside"):
        fragment_sums(p.flatten()[:10], 30, 7, 5)


@pytest.mark.parametrize("layer", [torch.nn.Linear(5, 7), Conv1D(7, 5)])   # 7 outputs, 5 inputs
def test_rank1_fit_is_row_sums_times_column_sums_over_the_total(layer):
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(7, 5, generator=gen, dtype=torch.float64) + 0.1          # outputs x inputs
    stored = p if isinstance(layer, torch.nn.Linear) else p.T
    f = AdamFactors.from_sums([("l", layer)], {"l": fragment_sums(stored, 0, *stored.shape)}, "l")
    r, c = f.factors["l"]
    assert r.shape == (7,) and c.shape == (5,)
    torch.testing.assert_close(torch.outer(r, c), torch.outer(p.sum(1), p.sum(0)) / p.sum())
    assert abs(r.mean().item() - 1) < 1e-14                   # the scale lives in c
    torch.testing.assert_close(c, p.mean(0))                  # column means
    u, w = torch.rand(7, dtype=torch.float64) + 0.5, torch.rand(5, dtype=torch.float64) + 0.5
    one = torch.outer(u, w)                                   # a rank-1 P is fitted exactly
    stored = one if isinstance(layer, torch.nn.Linear) else one.T
    f = AdamFactors.from_sums([("l", layer)], {"l": fragment_sums(stored, 0, *stored.shape)}, "l")
    torch.testing.assert_close(torch.outer(*f.factors["l"]), one, rtol=1e-13, atol=0)
    fake = torch.nn.Module()
    fake.l = layer
    torch.testing.assert_close(f.dense(fake)["l.weight"], stored, rtol=1e-13, atol=0)


def test_moments_of_adamw_are_its_step_denominator():
    """P = 1/(sqrt(v_hat)+eps) is what torch's AdamW divides by: its update is -lr m_hat P."""
    model = tiny_model("llama", dtype=torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-6,
                            weight_decay=0.0)
    assert AdamFactors.from_optimizer(model, opt) is None     # no moments before the first step
    for s in range(3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        model(input_ids=batch(4, 8, 128, seed=s), labels=batch(4, 8, 128, seed=s)).loss.backward()
        opt.step()
    p_el = elementwise_preconditioner(model, opt)
    for n, p in model.named_parameters():
        m_hat = opt.state[p]["exp_avg"] / (1 - 0.9 ** 3)
        torch.testing.assert_close(p.detach() - before[n], -1e-2 * m_hat * p_el[n],
                                   rtol=1e-9, atol=1e-15)
    f = AdamFactors.from_optimizer(model, opt)
    for name, _ in scored_layers(model, "linear"):
        p = p_el[f"{name}.weight"]
        torch.testing.assert_close(torch.outer(*f.factors[name]),
                                   torch.outer(p.sum(1), p.sum(0)) / p.sum())
    assert f.head == "lm_head"


# ---------------------------------------------------------------- weighted kernels

@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_adam_values_equal_the_weighted_explicit_construction(arch, pairing):
    """Every layer's input times sqrt(c_l) (shared q/k/v, gate/up inputs included), g times
    sqrt(r_head), then the pairing's kernel, built per layer by hand."""
    model = tiny_model(arch)
    f = random_factors(model)
    ids = batch(5, 12, 128)
    labels = ids.clone()
    labels[1, :4] = -100
    k = explicit_kernel(model, ids, pairing, labels, factors=f)
    for include_self in (False, True):
        v = lai_values(model, ids, labels, pairing=pairing, include_self=include_self,
                       preconditioner=f)
        assert rel_err(v, loo_mean(k, include_self)) < 1e-9
    assert rel_err(lai_values(model, ids, labels, pairing=pairing),
                   loo_mean(explicit_kernel(model, ids, pairing, labels))) < 1e-9


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_head_layer_set_is_the_exact_ghost_term_of_the_head(arch):
    """layers=head, token_pair exact == <grad_W l_z, grad_W l_j> over the LM head's weight W by
    per-sample autograd; with Adam factors == <grad_W l_z, (r c^T) (.) grad_W l_j>."""
    model = tiny_model(arch, tie_word_embeddings=False)
    ids = batch(5, 10, 128, seed=4)
    head = model.get_output_embeddings().weight
    q = per_sample_grads(model, ids, [head])
    assert rel_err(lai_values(model, ids, layers="head"), loo_mean(q @ q.T)) < 1e-9
    f = random_factors(model, "head")
    assert list(f.factors) == [f.head]
    dense = f.dense(model)[[n for n, p in model.named_parameters() if p is head][0]]
    k = (q * dense.flatten()) @ q.T
    v = lai_values(model, ids, layers="head", preconditioner=f)
    assert rel_err(v, loo_mean(k)) < 1e-9
    for pairing in ("aligned", "pooled"):        # the other pairings on the head's features
        k = explicit_kernel(model, ids, pairing, factors=f, layers="head")
        v = lai_values(model, ids, layers="head", pairing=pairing, preconditioner=f)
        assert rel_err(v, loo_mean(k)) < 1e-9


def random_preconditioner(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.1
            for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_preconditioned_references_equal_brute_force(arch):
    model = tiny_model(arch, tie_word_embeddings=False)    # the ghost sees the head use only
    ids, ref = batch(4, 10, 128, seed=3), batch(3, 10, 128, seed=4)
    pre = random_preconditioner(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([pre[n].flatten() for n, _ in named])
    q = per_sample_grads(model, ids, [p for _, p in named])
    r = per_sample_grads(model, ref, [p for _, p in named])
    assert rel_err(full_gradient_values(model, ids, precondition=pre),
                   loo_mean((q * flat) @ q.T)) < 1e-9
    assert rel_err(full_gradient_values(model, ids, ref_input_ids=ref, precondition=pre),
                   ((q * flat) @ r.T).mean(1)) < 1e-9
    lin = [p for m in hooked_modules(model, "linear")
           for p in [m.weight] + ([m.bias] if m.bias is not None else [])]
    names = {id(p): n for n, p in model.named_parameters()}
    flat = torch.cat([pre[names[id(p)]].flatten() for p in lin])
    q = per_sample_grads(model, ids, lin)
    assert rel_err(ghost_values(model, ids, precondition=pre), loo_mean((q * flat) @ q.T)) < 1e-9
    with pytest.raises(ValueError, match="no entry for parameter"):
        full_gradient_values(model, ids, precondition={})


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_sketch_with_preconditioning_is_unbiased(pairing):
    model = tiny_model("gpt2", vocab=64)
    f = random_factors(model, seed=3)
    ids = batch(4, 8, 64)
    exact = lai_values(model, ids, pairing=pairing, preconditioner=f)
    runs = torch.stack([lai_values(model, ids, pairing=pairing, method="sketch", sketch_dim=64,
                                   seed=s, preconditioner=f) for s in range(400)])
    mean, stderr = runs.mean(0), runs.std(0) / 400 ** 0.5
    assert ((mean - exact).abs() < 5 * stderr).all(), (mean, exact, stderr)
    assert (mean - exact).abs().mean() < (runs - exact).abs().mean() / 5


# ---------------------------------------------------------------- options and the Selector

@pytest.mark.parametrize("kw, message", [
    (dict(precondition="lbfgs"), "lai.score.precondition: 'lbfgs' is not one of none, adam"),
    (dict(precondition="adam", layers="blocks"), "lai.score.precondition: adam needs lai.score.layers"),
    (dict(precondition_every=0), "lai.score.precondition_every: must be an int >= 1"),
])
def test_bad_precondition_options(kw, message):
    with pytest.raises(ValueError, match=message):
        LAISettings(score=ScoreSettings(**kw)).resolved()


def test_adam_on_a_mixture_of_experts_needs_the_head_layer_set():
    model = tiny_model("mixtral")
    with pytest.raises(ValueError, match="routes tokens to experts.*lai.score.layers=head"):
        scored_layers(model, "linear")
    assert [n for n, _ in scored_layers(model, "head")] == ["lm_head"]


def _train(model, opt, steps, seed=0):
    for s in range(steps):
        x = batch(4, 8, 128, seed=100 + seed + s)
        opt.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()


@pytest.mark.parametrize("reference", ["global", "val"])
def test_selector_reads_moments_when_due_and_restores_them(reference):
    model = tiny_model("llama", dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    s = LAISettings(score=ScoreSettings(precondition="adam", precondition_every=3,
                                        method="exact", reference=reference)).resolved()
    val = [(batch(4, 8, 128, seed=9), shift_labels(batch(4, 8, 128, seed=9)))]
    reads = []

    def read(weights):
        reads.append(len(weights))
        return optimizer_moments(opt)(weights)
    sel = Selector(s, seed=0, moments=read, val_batches=lambda: val)
    ids = batch(6, 8, 128, seed=5)
    targets = shift_labels(ids)

    def values(step):
        sel.refresh(step, model)
        with torch.no_grad(), sel.capture(model) as cap:
            logits = model(input_ids=ids).logits
        return sel.select(step, cap, logits, targets, per_sequence_loss(logits, targets),
                          torch.arange(6)).values
    ref = {} if reference == "global" else {"ref_input_ids": val[0][0]}
    torch.testing.assert_close(values(1), lai_values(model, ids, **ref).float().double())
    assert sel.precond.factors is None and len(reads) == 1     # no moments yet: plain LAI
    _train(model, opt, 1)
    v2 = values(2)                                            # the first moments: read
    f2 = AdamFactors.from_optimizer(model, opt)
    torch.testing.assert_close(v2, lai_values(model, ids, preconditioner=f2, **ref),
                               rtol=1e-4, atol=0)
    assert len(reads) == 2 and reads[-1] == len(scored_layers(model, "linear"))
    val_features = sel.scorer._val
    _train(model, opt, 1, seed=1)
    values(3)
    values(4)
    assert len(reads) == 2                                    # every 3: next at step 5
    saved = sel.state_dict()
    _train(model, opt, 1, seed=2)
    v5 = values(5)
    assert len(reads) == 3 and sel.precond.step == 5
    f5 = AdamFactors.from_optimizer(model, opt)
    torch.testing.assert_close(v5, lai_values(model, ids, preconditioner=f5, **ref),
                               rtol=1e-4, atol=0)
    if reference == "val":                                   # recomputed with the new factors
        assert sel.scorer._val is not val_features
    again = Selector(s, seed=0, moments=read, val_batches=lambda: val)
    again.load_state_dict(saved)                             # as saved after step 4
    assert again.precond.step == 2
    for name, (_, c) in f2.factors.items():
        torch.testing.assert_close(again.precond.factors.factors[name][1], c)
    with pytest.raises(ValueError, match="needs a reader"):
        Selector(s, seed=0)

"""Sketched LAI: unbiased, agrees with exact on a briefly trained model; bf16 vs fp32."""
import copy

import pytest
import torch

from pipeline.lai import lai_values
from support import ROOT
from support.lai import batch, tiny_model

PAIRINGS = ["token_pair", "aligned", "pooled"]


def pearson(a, b):
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_sketch_is_unbiased(pairing):
    model = tiny_model("gpt2", vocab=64)
    ids = batch(4, 8, 64)
    exact = lai_values(model, ids, pairing=pairing)
    runs = torch.stack([lai_values(model, ids, pairing=pairing, method="sketch", sketch_dim=64,
                                   seed=s) for s in range(400)])
    mean, stderr = runs.mean(0), runs.std(0) / 400 ** 0.5
    assert ((mean - exact).abs() < 5 * stderr).all(), (mean, exact, stderr)
    single = (runs - exact).abs().mean()
    assert (mean - exact).abs().mean() < single / 5       # averaging really converges


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_sketch_agrees_with_exact_on_trained_model(trained_tiny, pairing):
    model, ids = trained_tiny
    exact = lai_values(model, ids, pairing=pairing)
    for seed in range(3):
        sk = lai_values(model, ids, pairing=pairing, method="sketch", seed=seed)
        assert sk.shape == exact.shape
        # docs/LAI_COST.md (benchmarks/lai_cost.py, same model and batch): at the default
        # sketch_dim the min Pearson over 10 seeds is 0.996 (token_pair), 1.000 (aligned),
        # 0.983 (pooled)
        assert pearson(sk, exact) > 0.95, (pairing, seed)
    assert torch.equal(lai_values(model, ids, pairing=pairing, method="sketch", seed=1),
                       lai_values(model, ids, pairing=pairing, method="sketch", seed=1))


def test_sketch_include_self_uses_exact_self_term(trained_tiny):
    model, ids = trained_tiny
    n = ids.shape[0]
    loo = lai_values(model, ids, method="sketch", seed=0)
    with_self = lai_values(model, ids, method="sketch", seed=0, include_self=True)
    exact_self = lai_values(model, ids, include_self=True) * n - \
        lai_values(model, ids) * (n - 1)
    assert torch.allclose(with_self * n, loo * (n - 1) + exact_self, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "sketch"])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_bf16_model_close_to_fp32(trained_tiny, pairing, method):
    model, ids = trained_tiny
    ids = ids[:16]
    fp32 = lai_values(model, ids, pairing=pairing, method=method)
    bf16 = lai_values(copy.deepcopy(model).to(torch.bfloat16), ids, pairing=pairing,
                      method=method)
    assert bf16.dtype == torch.float64
    # measured on this model: relative L2 error ~1e-3, Pearson > 0.99999
    assert ((bf16 - fp32).norm() / fp32.norm()).item() < 2e-2
    assert pearson(bf16, fp32) > 0.999


def test_lai_cost_page_states_the_defaults_of_the_code():
    """docs/LAI_COST.md names each pairing's default sketch_dim as pipeline/lai/kernels/pairings.py has
    it."""
    import re

    from pipeline.lai import PAIRINGS
    page = (ROOT / "docs" / "LAI_COST.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("Default sketch_dim"))
    stated = dict(re.findall(rf"({'|'.join(PAIRINGS)}) (\d+)", line))
    assert stated == {name: str(p.default_sketch_dim) for name, p in PAIRINGS.items()}, line

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


@pytest.mark.parametrize("sketch_dim", [16, 1024])       # vocabulary folded (50 > 8) and not
def test_aligned_sketch_is_the_countsketch_of_the_flattened_sides(sketch_dim):
    """Aligned's sketch equals an explicit CountSketch matrix applied to vec(a_j) over (layer,
    position, coordinate) and to vec(g_j) over (position, entry): bucket (i + o_l + h(t)) mod k,
    sign s_l(i) s(t) (o_vocab = 0), built here one coordinate at a time. Covers a shared input
    (one copy standing for two readers, weight sqrt(2)), ignored positions and a vocabulary
    side folded into fewer buckets than entries."""
    from pipeline.lai.kernels import sketch as sk
    from pipeline.lai.kernels.features import token_features
    from pipeline.lai.kernels.pairings import PAIRINGS

    torch.manual_seed(0)
    b, t, v, seed = 3, 5, 50, 7
    shared = torch.randn(b, t, 6, dtype=torch.float64)
    inputs = [shared, torch.randn(b, t, 9, dtype=torch.float64), shared]
    logits = torch.randn(b, t, v, dtype=torch.float64)
    targets = torch.randint(0, v, (b, t))
    targets[1, 2:] = -100
    valid = targets >= 0
    got = PAIRINGS["aligned"].sketch(inputs, logits, targets, valid, sketch_dim, seed)
    k1, k2 = PAIRINGS["aligned"].split(sketch_dim)
    exact = token_features(inputs, logits, targets)          # a [B, T, sum d], g [B, T, V]

    def shift(k, stream):
        a, c, _, _ = sk._params(seed, stream)
        return [((a * p + c) % sk.PRIME) % k for p in range(t)]

    def matrix(k, widths, offsets, streams, pos_stream):
        """[k, T * sum(widths)]: the CountSketch of the (position, coordinate) vector."""
        h, s_pos = shift(k, pos_stream), sk.signs(t, seed, pos_stream, "cpu", torch.float64)
        m = torch.zeros(k, t, sum(widths), dtype=torch.float64)
        start = 0
        for n, off, stream in zip(widths, offsets, streams):
            s = sk.signs(n, seed, stream, "cpu", torch.float64)
            for p in range(t):
                for i in range(n):
                    m[(i + off + h[p]) % k, p, start + i] = s[i] * s_pos[p]
            start += n
        return m.view(k, -1)

    # the features' own layout: each captured input once (the shared one by sqrt(2)): the
    # explicit matrix spans layers 0 (shared, counted twice) and 1
    mask = valid.to(torch.float64).unsqueeze(-1)
    a = torch.cat([shared * 2 ** 0.5, inputs[1]], -1) * mask
    m1 = matrix(k1, [6, 9], [sk.offset(k1, seed, 0), sk.offset(k1, seed, 1)], [0, 1],
                sk.STREAM_POS_A)
    m2 = matrix(k2, [v], [0], [sk.STREAM_VOCAB], sk.STREAM_POS_G)
    assert exact.g.shape == (b, t, v)
    torch.testing.assert_close(got.a, a.reshape(b, -1) @ m1.T)
    torch.testing.assert_close(got.g, exact.g.reshape(b, -1) @ m2.T)

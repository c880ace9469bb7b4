"""Step-normalised values (pipeline.lai.selection.normalize) and the filter on them: the z-score and the
centred rank equal their definitions, ignore unscored (NaN) sequences, and with lai.filter.normalize
the policy thresholds the normalised value; the ledger keeps raw and normalised values."""
import numpy as np
import pytest
import torch

from pipeline.lai import LAISettings, Selector
from pipeline.lai import FilterSettings
from pipeline.lai.selection.normalize import normalize


def test_zscore_and_rank_match_their_definitions():
    v = torch.tensor([3.0, -1.0, 2.0, 2.0, float("nan"), 10.0], dtype=torch.float64)
    ok = np.isfinite(v.numpy())
    x = v.numpy()[ok]
    z = normalize(v, "zscore").numpy()
    np.testing.assert_allclose(z[ok], (x - x.mean()) / x.std(), rtol=1e-12)
    assert np.isnan(z[~ok]).all()
    r = normalize(v, "rank").numpy()
    ranks = np.array([(x < a).sum() + ((x == a).sum() - 1) / 2 for a in x])   # ties averaged
    np.testing.assert_allclose(r[ok], (ranks + 0.5) / x.size - 0.5, rtol=1e-12)
    assert normalize(torch.ones(4, dtype=torch.float64), "zscore").abs().max() == 0
    with pytest.raises(ValueError, match="unknown mode"):
        normalize(v, "minmax")


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_normalised_filter_is_scale_free(scale):
    """The same batch at any value scale (values drift by orders of magnitude over training)
    gives the same decision with lai.filter.normalize=zscore, threshold -1."""
    from pipeline.lai.selection.baselines import FILTERS, FilterInput
    vals = torch.tensor([0.5, -2.0, 1.0, 0.1, -0.2, 0.3, 0.0, 0.9], dtype=torch.float64) * scale
    s = LAISettings(filter=FilterSettings(kind="lai", normalize="zscore", threshold=-1.0,
                                          max_exclude_frac=0.5)).resolved()
    sel = Selector(s, seed=0)
    score = normalize(FILTERS["lai"].scores(FilterInput(1, torch.arange(8), None, None,
                                                        torch.zeros(8), lai_values=vals), s, 0),
                      "zscore")
    keep = sel.policy.mask(score, step=0)
    z = (vals - vals.mean()) / vals.std(unbiased=False)
    assert keep.tolist() == (z > -1.0).tolist() and not keep.all()


def test_ledger_keeps_raw_and_normalised_values(tmp_path):
    from pipeline.format.ledger import ROW_V1, Ledger, read_ledger
    led = Ledger(tmp_path, 0, chunk_rows=3)
    led.append(1, [0, 1], [0.5, -0.5], [True, False], [2.0, 3.0], [1.0, -1.0])
    led.append(2, [2, 3], [0.1, 0.2], [True, True], [1.0, 1.0])           # no normalised value
    led.close()
    old = np.zeros(2, ROW_V1)                   # a chunk written before value_norm existed
    old["step"], old["seq_id"] = 3, [4, 5]
    np.save(tmp_path / "ledger" / "rank-00000" / "chunk-00000099.npy", old)
    rows = read_ledger(tmp_path)
    assert rows["value_norm"][:2].tolist() == [1.0, -1.0]
    assert np.isnan(rows["value_norm"][2:]).all() and rows["seq_id"].tolist() == list(range(6))

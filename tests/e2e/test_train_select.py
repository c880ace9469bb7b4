"""lai.select.kind=oversample (with lai.weighting.kind=sigmoid) end to end on 2 CPU ranks (torchrun, gloo,
real DeepSpeed), the tiny run of support.train: 1.5 x the global batch of 8 scored per step,
the best 8 trained.

- every candidate is in the ledger; each step consumes the next 12 samples of the global order
  and trains exactly the 8 highest-valued of them (the first 8 before lai.warmup_steps); the
  trained tokens per step are those of 8 sequences, as without selection; the kept rows' loss
  weights average exactly 1 and rise with the value, the untrained ones weigh 0;
- resume: N + N steps == 2N straight (ledger and final parameters bitwise);
- 1 rank (micro batch 8) == 2 ranks (micro batch 4) over N steps: the same candidates, the
  same choice at every step, the values equal up to float reduction order (1e-4).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support.train import N, final_params, ledger, make_animals_data, train
from pipeline.lai import FilterSettings, SelectSettings

pytestmark = pytest.mark.slow
G, P = 8, 12                       # global batch, candidates per step
SELECT = ["lai.select.kind=oversample", "lai.select.factor=1.5", "lai.filter.kind=none",
          "lai.weighting.kind=sigmoid", "train.global_batch=8", "train.schedule=constant"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, Path, str]:
    """(data dir, the 2N-step run on 2 ranks, its output)."""
    data = make_animals_data(tmp_path_factory.mktemp("data"))
    run = tmp_path_factory.mktemp("straight") / "run"
    return data, run, train(data, run, *SELECT)


def test_oversample_trains_the_top_global_batch(straight):
    _, run, out = straight
    rows = ledger(run)
    assert f"done: {2 * N} steps, {2 * N * G * 32:,} tokens" in out      # 8 sequences x 32 / step
    assert "(lai.select draws 12 candidates per step)" in out and "select oversample x1.5" in out
    assert rows.size == 2 * N * P and set(rows["rank"]) == {0, 1}
    for step in range(1, 2 * N + 1):
        r = rows[rows["step"] == step]                                   # sorted by seq_id
        assert r["seq_id"].tolist() == list(range(P * (step - 1), P * step))
        kept = r["kept"]
        if step == 1:                                                    # lai.warmup_steps=1
            assert kept.tolist() == [True] * G + [False] * (P - G)
        else:
            top = np.argsort(-r["value"], kind="stable")[:G]
            assert sorted(np.flatnonzero(kept).tolist()) == sorted(top.tolist()), step
        assert np.all(r["weight"][~kept] == 0)
        w, v = r["weight"][kept], r["value"][kept]
        assert abs(w.mean() - 1) < 1e-6 and w.min() > 0.25 and w.max() < 4   # bounds 1/4..4
        assert np.all(np.diff(w[np.argsort(v)]) >= -1e-6)                  # rises with value


def test_oversample_resume_equals_straight(straight, tmp_path):
    data_dir, run, _ = straight
    split = tmp_path / "split"
    train(data_dir, split, *SELECT, f"train.steps={N}")
    train(data_dir, split, *SELECT)                                      # extends to 2N
    a, b = ledger(run), ledger(split)
    for f in ("step", "seq_id", "kept", "loss", "value", "value_norm", "weight"):
        assert np.array_equal(a[f], b[f], equal_nan=True), f"ledger column {f} differs"
    pa, pb = final_params(run), final_params(split)
    assert all(np.array_equal(pa[k].numpy(), pb[k].numpy()) for k in pa)


def test_oversample_one_rank_equals_two(straight, tmp_path):
    data_dir, run, _ = straight
    one = tmp_path / "one"
    train(data_dir, one, *SELECT, "train.micro_batch=8", f"train.steps={N}", ranks=1)
    a, b = ledger(run), ledger(one)
    a = a[a["step"] <= N]
    assert np.array_equal(a["seq_id"], b["seq_id"]) and np.array_equal(a["step"], b["step"])
    assert np.array_equal(a["kept"], b["kept"])
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-4, atol=1e-4)


def test_select_settings_refused_with_field_name():
    from pipeline.config.batch import pool_size
    from pipeline.lai import LAISettings
    assert pool_size(1.5, 8, 2) == 12 and pool_size(1.25, 8, 2) == 10
    with pytest.raises(ValueError, match=r"^lai\.select\.factor: 1\.3 x global batch 8 = 10\.4 "):
        pool_size(1.3, 8, 2)
    with pytest.raises(ValueError, match=r"^lai\.select\.factor: .* multiple of the 4 rank"):
        pool_size(1.25, 8, 4)
    for enabled, filt in ((True, "lai"), (False, "none")):
        with pytest.raises(ValueError, match=r"^lai\.select\.kind: 'oversample' ranks the "
                                             r"candidates by one score: .* lai\.filter\.kind=none"):
            LAISettings(enabled=enabled, select=SelectSettings(kind="oversample"),
                        filter=FilterSettings(kind=filt)).resolved()
    assert LAISettings(enabled=False, select=SelectSettings(kind="oversample"),
                       filter=FilterSettings(kind="oracle",
                                             oracle_sources=["spam"])).resolved().select.kind == "oversample"
    with pytest.raises(ValueError, match=r"^lai\.select\.factor: must be a finite number > 1"):
        LAISettings(select=SelectSettings(kind="oversample", factor=1.0),
                    filter=FilterSettings(kind="none")).resolved()


def test_oracle_with_refill_trains_the_least_harmful_candidates(tmp_path):
    """With LAI off, lai.select ranks by the filter's scores: lai.filter.kind=oracle at factor 2 trains
    the 8 least harmful of each step's 16 candidates (the oracle-with-refill reference), the
    rest are untrained."""
    from support.datagen import make_data_dir, random_docs
    from pipeline.comm import Comm
    from pipeline.data import PackedDataset, RankLoader
    from pipeline.lai import LAISettings, Selector
    from pipeline.lai.selection.baselines import oracle_scores
    from pipeline.train.pool import CandidatePool
    from support.lai import tiny_model
    dirs = [make_data_dir(tmp_path / n, random_docs(60, 64, seed=i), vocab_size=64, source=n)
            for i, n in enumerate(("good", "bad"))]
    ds = PackedDataset([(d, 1.0) for d in dirs], 16)
    s = LAISettings(enabled=False, filter=FilterSettings(kind="oracle", oracle_sources=["bad"]),
                    select=SelectSettings(kind="oversample", factor=2.0))
    selector = Selector(s.resolved(has_documents=True), seed=0, comm=Comm.local(), documents=ds)
    pool = CandidatePool(selector, RankLoader(ds, 4, 0, 1), Comm.local(), torch.device("cpu"),
                         micro_batch=4, global_batch=8)

    class Engine:                                   # what the pool calls: forward and .module
        module = tiny_model(vocab=64)

        def __call__(self, **kw):
            return self.module(**kw)
    for step in (1, 2):
        drawn = pool.draw(step, Engine())
        score = oracle_scores(drawn.seq_ids, ds, {"bad"})
        assert drawn.chosen.sum() == 8 and torch.equal(drawn.values, score)
        assert score[drawn.chosen].min() >= score[~drawn.chosen].max()
        assert 0 < (score <= 0).sum() and drawn.seq_ids.tolist() == list(range(16 * (step - 1),
                                                                                 16 * step))

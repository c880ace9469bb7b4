"""lai.filter.kind=oracle (ground truth by source, the benchmarks' perfect-filter reference):

- Selector: the value of a sequence is 0.5 - the fraction of its tokens from lai.filter.oracle_sources
  (sequences spanning sources included); with a cap at or above their share exactly the sequences
  at least half from those sources are excluded, under a smaller cap the cap's count of them, purest
  and then lowest position first; nothing before lai.warmup_steps;
- on the real trainer path (torchrun, 2 ranks, DeepSpeed): every step excludes exactly
  min(cap, harmful in the global micro-batch) sequences, all harmful, and the ledger holds the
  oracle's values;
- config: oracle without sources, sources without oracle, and a source the training data lacks are
  refused in one line naming lai.filter.oracle_sources;
- loss-based filtering at a rate below half a sequence of the batch excludes nothing.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from support.datagen import make_data_dir, random_docs, two_source_dir
from pipeline.lai import FilterSettings

SEQ = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("oracle")
    return {"good": make_data_dir(root / "good", random_docs(80, 64, seed=1), vocab_size=64,
                                  source="good", val_docs=random_docs(10, 64, seed=9)),
            "bad": make_data_dir(root / "bad", random_docs(80, 64, seed=2), vocab_size=64,
                                 source="bad"),
            "mix": two_source_dir(root / "mix")}


def _harmful_fraction(ds, seq_id: int, harmful: set[str]) -> float:
    spans = ds.locate(seq_id)
    return sum(s.num_tokens for s in spans if s.source in harmful) / sum(s.num_tokens for s in spans)


def _selector(ds, sources, cap, warmup=0):
    from pipeline.lai import LAISettings, Selector
    s = LAISettings(enabled=False, warmup_steps=warmup,
                    filter=FilterSettings(kind="oracle", oracle_sources=sources,
                                          max_exclude_frac=cap)).resolved()
    return Selector(s, seed=0, documents=ds)


def test_oracle_selector_values_and_masks(data):
    from pipeline.data import PackedDataset
    ds = PackedDataset([(data["good"], 2.0), (data["bad"], 1.0), (data["mix"], 1.0)], SEQ)
    harmful = {"bad", "mixb"}
    n = 24
    seq_ids = torch.arange(5 * n, 6 * n)
    frac = torch.tensor([_harmful_fraction(ds, int(i), harmful) for i in seq_ids],
                        dtype=torch.float64)
    straddling = ((frac > 0) & (frac < 1)).sum()
    assert straddling > 0, "no sequence spans two sources: the data cannot show the fraction rule"
    bad = frac >= 0.5
    assert 0 < bad.sum() < n
    losses = torch.zeros(n)
    # cap at or above the harmful share: exactly the sequences at least half harmful go
    sel = _selector(ds, sorted(harmful), 0.9).select(3, None, None, None, losses, seq_ids)
    torch.testing.assert_close(sel.values, 0.5 - frac)
    assert torch.equal(sel.keep, ~bad)
    # a smaller cap: floor(cap * n) of them, the purest first, then by position
    cap_n = int(bad.sum()) - 2
    keep = _selector(ds, sorted(harmful), (cap_n + 0.5) / n).select(
        3, None, None, None, losses, seq_ids).keep
    order = sorted(range(n), key=lambda j: (float(0.5 - frac[j]), j))
    assert set(np.flatnonzero(~keep.numpy())) == set(order[:cap_n])
    assert bool(bad[~keep].all())
    # warmup: nothing excluded before lai.warmup_steps
    assert _selector(ds, ["bad"], 0.9, warmup=3).select(
        3, None, None, None, losses, seq_ids).keep.all()


def test_oracle_config_errors(data):
    from pipeline.config import load_config
    from pipeline.data import PackedDataset
    from pipeline.errors import UserError
    cases = {("lai.filter.kind=oracle",): "lai.filter.oracle_sources: lai.filter.kind=oracle needs",
             ("lai.filter.kind=lai", "lai.filter.oracle_sources=[bad]"):
             "lai.filter.oracle_sources: set to ['bad'] but only lai.filter.kind=oracle reads it"}
    for overrides, msg in cases.items():
        with pytest.raises(UserError) as e:
            load_config(None, [f"data.sources=[{{path: '{data['good']}', weight: 1.0}}]",
                               *overrides]).validate()
        assert str(e.value).startswith(msg) and "\n" not in str(e.value), str(e.value)
    ds = PackedDataset([(data["good"], 1.0), (data["bad"], 1.0)], SEQ)
    with pytest.raises(UserError, match=r"^lai.filter.oracle_sources: 'spam' not among the training "
                                        r"data's sources \(bad, good\)$"):
        _selector(ds, ["bad", "spam"], 0.5)


def test_loss_filter_rate_below_half_a_sequence_keeps_all():
    from pipeline.lai import LAISettings, Selector
    s = LAISettings(enabled=False, filter=FilterSettings(kind="loss", baseline_rate=0.02,
                                                         max_exclude_frac=0.5))
    sel = Selector(s.resolved(), seed=0)
    losses = torch.tensor([1.0, 5.0, 2.0, 3.0])
    assert sel.select(1, None, None, None, losses, torch.arange(4)).keep.all()


@pytest.mark.slow
def test_oracle_on_the_trainer_path(data, tmp_path):
    """2 ranks x 4 sequences, sources good:bad 1:1, cap 0.3 (2.4 of 8 per step, carried
    fractionally: 2 or 3)."""
    from pipeline.lai import FilterPolicy
    from pipeline.report.valuation import build_dataset, load_data_spec
    from support.train import ROOT, env, ledger, torchrun
    run = tmp_path / "run"
    args = [str(ROOT / "configs" / "tiny_cpu.yaml"), f"run.out_dir={run}", "run.save_every=0",
            f"data.sources=[{{path: '{data['good']}', weight: 1.0}}, "
            f"{{path: '{data['bad']}', weight: 1.0}}]",
            f"data.seq_len={SEQ}", "model.n_layer=1", "model.hidden=32", "model.n_head=2",
            "train.micro_batch=4", "train.global_batch=8", "train.steps=6", "train.zero_stage=0",
            "train.eval_every=0", "train.warmup_steps=1", "lai.enabled=false",
            "lai.filter.kind=oracle", "lai.filter.oracle_sources=[bad]", "lai.filter.max_exclude_frac=0.3",
            "lai.warmup_steps=1", "log.every=2", "log.histogram_every=0"]
    p = subprocess.run(torchrun(args), env=env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = ledger(run)
    ds = build_dataset(load_data_spec(run))
    assert rows.size == 6 * 8
    frac = np.array([_harmful_fraction(ds, int(i), {"bad"}) for i in rows["seq_id"]])
    np.testing.assert_allclose(rows["value"], 0.5 - frac)
    for step in range(1, 7):
        r = rows["step"] == step
        bad, kept = frac[r] >= 0.5, rows["kept"][r]
        budget = FilterPolicy(FilterSettings(max_exclude_frac=0.3, threshold=0.0),
                              0).allowance(step - 1, 8, 8)
        want = 0 if step == 1 else min(budget, int(bad.sum()))      # lai.warmup_steps=1
        assert (~kept).sum() == want, (step, bad, kept)
        assert bad[~kept].all()
    assert (~rows["kept"]).sum() > 0

"""lai.unit=document on the training path: a dropped document's tokens contribute exactly
nothing to the gradient, the loader's document runs are the dataset's DocSpans, and on the real
trainer (torchrun, 2 ranks, DeepSpeed) the oracle drops exactly the harmful documents of packed
sequences, one ledger row per document unit."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from pipeline.comm import Comm
from pipeline.lai.kernels.units import unit_targets, units_of
from pipeline.lai.kernels.grads import per_sequence_loss, per_unit_loss
from pipeline.train.step import masked_loss
from support.datagen import two_source_dir

SEQ = 16


def test_dropped_units_contribute_nothing_to_the_gradient():
    """masked_loss over units = the token mean over the kept units' tokens alone, as if the
    dropped documents' targets were ignored (brute force: the same rows with them -100)."""
    torch.manual_seed(0)
    w = torch.randn(8, 11, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 10))
    segments = torch.tensor([[0] * 4 + [1] * 6, [2] * 10, [0] * 3 + [1] * 3 + [2] * 4])
    u = units_of(segments, targets)
    keep = torch.tensor([True, False, True, False, True, True])
    loss, stats = masked_loss(per_unit_loss(x @ w, targets, u), u.tokens, keep, Comm.local())
    got, = torch.autograd.grad(loss, w)
    dropped = torch.isin(u.index, torch.nonzero(~keep).flatten())
    kept_targets = torch.where(dropped, torch.full_like(targets, -100), targets)
    ce = torch.nn.functional.cross_entropy((x @ w).transpose(1, 2), kept_targets,
                                           ignore_index=-100, reduction="sum")
    want, = torch.autograd.grad(ce / (kept_targets != -100).sum(), w)
    torch.testing.assert_close(got, want)
    assert stats.kept_tokens == int((kept_targets != -100).sum())
    one = units_of(torch.zeros_like(targets), targets)      # one unit per row = the rows
    torch.testing.assert_close(per_unit_loss(x @ w, targets, one),
                               per_sequence_loss(x @ w, targets))
    assert unit_targets(u, targets)[1].tolist()[4:] == targets[0, 4:].tolist()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return two_source_dir(tmp_path_factory.mktemp("units") / "mix")


def test_loader_segments_are_the_document_runs_of_each_target(mixed):
    from pipeline.data import PackedDataset, RankLoader
    ds = PackedDataset([(mixed, 1.0)], SEQ)
    batch = RankLoader(ds, 6, 0, 1, segments=True).next_batch()
    for row, seq_id in enumerate(batch["seq_ids"].tolist()):
        owner = np.concatenate([np.full(s.num_tokens, k) for k, s in enumerate(ds.locate(seq_id))])
        assert batch["segments"][row].tolist() == owner[1:].tolist()   # target t = token t + 1


@pytest.mark.slow
def test_document_units_on_the_trainer_path(mixed, tmp_path):
    """Packed sequences straddling sources mixa and mixb, 2 ranks x 4 sequences, LAI values per
    document (the token_pair sketch) and the oracle deciding at cap 0.9: every mixb document is
    dropped and every mixa one kept, one ledger row per document run holding a target; the
    value histogram holds every rank's units (the ranks' counts differ)."""
    from pipeline.report.stats import locate_all
    from pipeline.report.valuation import build_dataset, load_data_spec
    from support.train import ROOT, env, ledger, torchrun
    run = tmp_path / "run"
    args = [str(ROOT / "configs" / "tiny_cpu.yaml"), f"run.out_dir={run}", "run.save_every=0",
            f"data.sources=[{{path: '{mixed}', weight: 1.0}}]", f"data.seq_len={SEQ}",
            "model.n_layer=1", "model.hidden=32", "model.n_head=2", "train.micro_batch=4",
            "train.global_batch=8", "train.steps=4", "train.zero_stage=0", "train.eval_every=0",
            "train.warmup_steps=1", "lai.enabled=true", "lai.unit=document",
            "lai.filter.kind=oracle", "lai.filter.oracle_sources=[mixb]", "lai.filter.max_exclude_frac=0.9",
            "lai.memory.weight=0", "lai.warmup_steps=0", "log.every=2", "log.histogram_every=2"]
    p = subprocess.run(torchrun(args), env=env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = ledger(run)
    ds = build_dataset(load_data_spec(run))
    want = 0
    for seq_id in np.unique(rows["seq_id"]):
        spans = ds.locate(int(seq_id))
        runs = sorted({k for k in np.searchsorted(np.cumsum([s.num_tokens for s in spans]),
                                                  np.arange(1, SEQ + 1), side="right")})
        assert sorted(rows["segment"][rows["seq_id"] == seq_id]) == runs
        want += len(runs)
    assert rows.size == want and np.isfinite(rows["value"]).all()
    spans = locate_all(rows, ds)
    assert np.array_equal(spans.row, np.arange(rows.size))        # one document per row
    harmful = np.array([spans.docs[d][0] == "mixb" for d in spans.doc])
    assert 0 < harmful.sum() < rows.size
    assert not rows["kept"][harmful].any() and rows["kept"][~harmful].all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0})    # keep them all
    ea.Reload()
    counts = {e.step: e.histogram_value.num for e in ea.Histograms("lai/values")}
    assert counts == {s: float((rows["step"] == s).sum()) for s in (2, 4)}
    assert len({int((rows["rank"][rows["step"] == 2] == k).sum()) for k in (0, 1)}) > 1

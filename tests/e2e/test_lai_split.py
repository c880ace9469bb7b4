"""The filter's decisions and the split of the global batch (pipeline.lai.selection.policy): the same global
batches of 16 sequences, the same model, split as 1 rank x micro 8 x accumulation 2, 1 rank x
micro 4 x 4, and 2 ranks (a real gloo group) x micro 8 x 1.

- What no longer depends on the split is equal: with per-sequence scores (LAI values against the
  same val reference, lai.filter.normalize=none, no memory) and a budget that does not bind, every split
  excludes exactly the same sequences.
- The budget per step is the same for every split: with lai.filter.max_exclude_frac 0.1 (1.6 of 16 per
  step, carried) and every sequence a candidate, each step excludes exactly its budget (1 or 2)
  under every split, where the old per-micro-batch cap floor(0.1 x 8) = 0 excluded nothing on
  one rank.
(What the start line says about it, pipeline.lai.selection.policy.describe: unit/test_lai_policy.py.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pipeline.lai import FilterSettings

STEPS, G = 4, 16


def _batches():
    from support.engine import T, V
    g = torch.Generator().manual_seed(3)
    train = torch.randint(0, V, (STEPS, G, T + 1), generator=g)
    val = torch.randint(0, V, (G, T + 1), generator=g)
    return train, val


def _decide(rank: int, world: int, micro: int, **lai) -> tuple[list[list[bool]], list[float]]:
    """Run the selector over STEPS steps of this rank's slices: the global keep mask per step
    (sequences in global order, identical on every rank) and this rank's values."""
    import support.engine as es
    from pipeline.comm import Comm
    from pipeline.lai import LAISettings, MemorySettings, ScoreSettings, Selector, per_sequence_loss
    comm = Comm.resolve()
    model = es.seeded_model(es.tiny_cfg(0, "llama"))
    model.eval()
    train, val = _batches()
    accum = G // (micro * world)

    def local(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lo = k * micro * world + rank * micro           # the loader's slice of global micro k
        rows = x[lo:lo + micro]
        return rows[:, :-1], rows[:, 1:], torch.arange(lo, lo + micro)

    vals = [local(val, k)[:2] for k in range(accum)]
    s = LAISettings(enabled=True, filter=FilterSettings(kind="lai", **lai),
                    score=ScoreSettings(reference="val", compile=False),
                    memory=MemorySettings(weight=0.0)).resolved(has_val=True)
    sel = Selector(s, seed=0, comm=comm, val_batches=lambda: vals, global_batch=G)
    out, values = [], []
    for step in range(1, STEPS + 1):
        sel.refresh(step, model)
        keep = torch.zeros(G, dtype=torch.bool)
        for k in range(accum):
            ids, tgt, pos = local(train[step - 1], k)
            with torch.no_grad(), sel.capture(model) as cap:
                logits = model(input_ids=ids).logits
            v, mask, _ = sel.select(step, cap, logits, tgt, per_sequence_loss(logits, tgt),
                                    pos + (step - 1) * G)
            values += v.tolist()
            everyone = torch.cat(comm.gather(torch.stack([pos, mask.long()])), dim=1)
            keep[everyone[0]] = everyone[1].bool()
        out.append(keep.tolist())
    return out, values


def _settings() -> dict[str, dict]:
    """exact: raw values, threshold at their 20th percentile (LAI_TEST_SPLIT_THRESHOLD), a budget
    that never binds; budget: every sequence a candidate, 0.1 of the global batch."""
    threshold = float(os.environ["LAI_TEST_SPLIT_THRESHOLD"])
    return {"exact": dict(normalize="none", threshold=threshold, max_exclude_frac=1.0),
            "budget": dict(normalize="none", threshold=1e30, max_exclude_frac=0.1)}


def _two_ranks(rank: int) -> None:
    results = {name: _decide(rank, 2, 8, **s)[0] for name, s in _settings().items()}
    if rank == 0:
        Path(os.environ["LAI_TEST_SPLIT_OUT"]).write_text(json.dumps(results))


def test_decisions_do_not_depend_on_the_split(tmp_path, monkeypatch):
    import support.engine as es
    from pipeline.lai import FilterPolicy
    values = _decide(0, 1, 16, normalize="none", threshold=-1e30)[1]
    monkeypatch.setenv("LAI_TEST_SPLIT_THRESHOLD", repr(float(torch.tensor(values).quantile(0.2))))
    out = tmp_path / "two_ranks.json"
    monkeypatch.setenv("LAI_TEST_SPLIT_OUT", str(out))
    es.run_on_ranks(_two_ranks)
    two = json.loads(out.read_text())
    for micro in (8, 4):
        one = _decide(0, 1, micro, **_settings()["exact"])[0]
        assert one == two["exact"], micro
        assert 0 < sum(not k for step in one for k in step) < STEPS * G     # it decided
        budgeted = _decide(0, 1, micro, **_settings()["budget"])[0]
        for step, (a, b) in enumerate(zip(budgeted, two["budget"])):
            budget = FilterPolicy(FilterSettings(max_exclude_frac=0.1, threshold=0.0),
                                  0).allowance(step, G, G)
            assert a.count(False) == b.count(False) == budget, (micro, step)
    assert [FilterPolicy(FilterSettings(max_exclude_frac=0.1, threshold=0.0), 0).allowance(s, G,
                                                                                           G) for s in range(STEPS)] == \
        [1, 2, 1, 2]

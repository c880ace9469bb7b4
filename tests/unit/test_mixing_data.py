"""Source mixing's data side (lai.mixing): the deterministic allocation of each global
micro-batch to sources (credit carried, per-source counters), the dataset addressing samples by
source, the loader following changing weights and resuming bit for bit (also with another world
size), the config rules and per-source val sets. The mixers' math: test_mixing.py; the trainer
end to end: e2e/test_train_mixing.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data import PackedDataset, RankLoader
from pipeline.data.mixture import DynamicMixture
from pipeline.errors import UserError
from support import ROOT
from support.datagen import make_data_dir, random_docs

L = 16


# ---------------------------------------------------------------- the allocation

def test_allocation_by_hand():
    """G = 4, weights (.5, .3, .2): owed (2, 1.2, .8) -> (2, 1, 1), credit (0, .2, -.2); then owed
    (2, 1.4, .6) -> (2, 1, 1); then (2, 1.6, .4) -> (2, 2, 0). Slots spread evenly; each source's
    samples drawn in order."""
    m = DynamicMixture([5.0, 3.0, 2.0])
    src, k = m.next_batch(4)
    assert src.tolist() == [0, 1, 2, 0] and k.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(m.credit, [0, 0.2, -0.2], atol=1e-15)
    src, k = m.next_batch(4)
    assert src.tolist() == [0, 1, 2, 0] and k.tolist() == [2, 1, 1, 3]
    src, k = m.next_batch(4)
    assert src.tolist() == [0, 1, 0, 1] and k.tolist() == [4, 2, 5, 3]
    assert m.drawn.tolist() == [6, 4, 2]


def test_allocation_tracks_any_weight_trajectory():
    """Random weights every batch (some zero): every batch has G slots, each source's cumulative
    count stays within one sample of the sum of G * p over the batches so far, and its samples
    are drawn in order without gaps."""
    rng = np.random.default_rng(0)
    m, G, S = DynamicMixture(np.ones(5)), 12, 5
    owed, seen = np.zeros(S), [[] for _ in range(S)]
    for b in range(400):
        w = rng.dirichlet(np.full(S, 0.5)) * (rng.random(S) > 0.15)
        if w.sum() == 0:
            w[0] = 1.0
        m.set_weights(w)
        src, k = m.next_batch(G)
        assert len(src) == G
        owed += G * w / w.sum()
        for s, kk in zip(src.tolist(), k.tolist()):
            seen[s].append(kk)
        assert np.abs(m.drawn - owed).max() < 1.0 + 1e-9, b
    for s in range(S):
        assert seen[s] == list(range(len(seen[s])))
    with pytest.raises(ValueError, match="mixing weights"):
        m.set_weights([1.0, -1.0, 0, 0, 0])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixdata")
    return [make_data_dir(root / n, random_docs(m, seed=i), source=n)
            for i, (n, m) in enumerate([("a", 60), ("b", 40), ("c", 10)])]


def test_dataset_addresses_samples_by_source_and_index(dirs):
    ds = PackedDataset([(d, 1.0) for d in dirs], L, seed=2, mixing=True)
    static = PackedDataset([(d, 1.0) for d in dirs], L, seed=2)
    assert ds.source_names == ["a", "b", "c"] and ds.fingerprint != static.fingerprint
    for s in range(3):
        for k in (0, 5, 3 * ds.streams[s].num_samples + 1):      # across source epochs
            i = int(ds.seq_ids(np.array([s]), np.array([k]))[0])
            assert ds.source_of([i]).tolist() == [s]
            spans = ds.locate(i)
            assert spans[0].source == "abc"[s]
            np.testing.assert_array_equal(ds.sample(i), np.concatenate([ds.span_tokens(x) for x in spans]))
            pieces = ds.streams[s].pieces(k)
            assert [(p.doc, p.offset, p.length) for p in pieces] == \
                   [(x.doc, x.token_offset, x.num_tokens) for x in spans]
    assert static.source_of(range(50)).tolist() == \
           ["abc".index(static.locate(i)[0].source) for i in range(50)]
    with pytest.raises(ValueError, match="mixing=True"):
        static.seq_ids(np.array([0]), np.array([0]))


def batches(loaders, n, weights=None):
    """n global micro-batches (the ranks' slices concatenated); weights[i] set before batch i."""
    out = []
    for i in range(n):
        if weights is not None:
            for ld in loaders:
                ld.set_weights(weights[i])
        parts = [ld.next_batch() for ld in loaders]
        out.append({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    return out


def test_loader_follows_the_weights_and_resumes_bit_for_bit(dirs):
    """Weights changed before every batch: the sources of each global batch are the allocation
    of those weights; a loader restored from the state after 5 batches continues identically,
    with 2 ranks as with 4 (same G)."""
    srcs = [(d, w) for d, w in zip(dirs, (1.0, 2.0, 1.0))]
    rng = np.random.default_rng(3)
    weights = [rng.dirichlet(np.ones(3)) for _ in range(12)]
    make = lambda micro, world: [RankLoader(PackedDataset(srcs, L, seed=4, mixing=True), micro, r, world)  # noqa: E731
                                 for r in range(world)]
    straight = batches(make(4, 2), 12, weights)
    replay = DynamicMixture([1.0, 2.0, 1.0])
    ds = PackedDataset(srcs, L, seed=4, mixing=True)
    for b, w in zip(straight, weights):
        replay.set_weights(w)
        src, k = replay.next_batch(8)
        assert b["seq_ids"].tolist() == ds.seq_ids(src, k).tolist()
        x = torch.from_numpy(np.stack([ds.sample(int(i)) for i in b["seq_ids"]]))
        assert torch.equal(b["input_ids"], x[:, :-1]) and torch.equal(b["targets"], x[:, 1:])
    first = make(4, 2)
    batches(first, 5, weights)
    state = first[0].state_dict()
    assert state == first[1].state_dict()                   # global: the same on every rank
    for micro, world in ((4, 2), (2, 4)):
        resumed = make(micro, world)
        for ld in resumed:
            ld.load_state_dict(state)
        for want, got in zip(straight[5:], batches(resumed, 7, weights[5:])):
            assert all(torch.equal(want[k], got[k]) for k in want)
    static = RankLoader(PackedDataset(srcs, L, seed=4), 4, 0, 2)
    with pytest.raises(ValueError, match="static blend"):
        static.set_weights([1.0, 1.0, 1.0])
    with pytest.raises(UserError, match="loader state"):
        static.load_state_dict(state)                       # mixing state into a static run
    with pytest.raises(UserError, match="resumes from its state"):
        RankLoader(ds, 4, 0, 2, samples_consumed=8)


@pytest.mark.parametrize("mixing", [False, True])
def test_next_pool_is_the_global_order_of_next_batch(dirs, mixing):
    """lai.select's pool of n = G samples is the global micro-batch the ranks' next_batch would
    have drawn (their slices in rank order), and both consume G."""
    srcs = [(d, w) for d, w in zip(dirs, (1.0, 2.0, 1.0))]
    weights = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3], [0.3, 0.3, 0.4]]
    make = lambda world: [RankLoader(PackedDataset(srcs, L, seed=4, mixing=mixing), 4 // world, r, world)  # noqa: E731
                          for r in range(world)]
    ranks, (pool,) = make(2), make(1)
    for w in weights:
        for ld in (*ranks, pool):
            if mixing:
                ld.set_weights(w)
        want = np.concatenate([ld.next_batch()["seq_ids"].numpy() for ld in ranks])
        assert pool.next_pool(4).tolist() == want.tolist()
        assert pool.samples_consumed == ranks[0].samples_consumed


def test_config_rules(dirs):
    """lai.mixing needs 2+ sources (one line); it decides the seq_id layout, so switching it on
    resume is refused while its step size may change; RUN/data.json says it is on."""

    from pipeline.config import load_config
    from pipeline.train.checkpointing.resume import resume_changes
    from pipeline.train.setup import data_json
    tiny = ROOT / "configs" / "tiny_cpu.yaml"

    def cfg(*overrides, sources=dirs[:2]):
        listed = ", ".join(f"{{path: '{d}', weight: 1}}" for d in sources)
        return load_config(tiny, [f"data.sources=[{listed}]", "lai.mixing.without_val=true",
                                  *overrides])
    with pytest.raises(UserError, match=r"^lai.mixing.kind: needs at least 2 data.sources to mix, got 1$"):
        cfg("lai.mixing.kind=value", sources=dirs[:1]).validate()
    on = cfg("lai.mixing.kind=value").validate()
    assert data_json(on)["mixing"] is True and "mixing" not in data_json(cfg())
    old = {**on.to_dict(), "world": 2}
    breaking, allowed = resume_changes(old, {**cfg().validate().to_dict(), "world": 2})
    assert breaking == ["lai.mixing.kind: 'value' -> 'none'"] and allowed == []
    breaking, allowed = resume_changes(old, {**cfg("lai.mixing.kind=value", "lai.mixing.eta=0.3")
                                             .validate().to_dict(), "world": 2})
    assert breaking == [] and allowed == ["lai.mixing.eta: 0.1 -> 0.3"]


def test_mixing_refuses_a_self_influence_reference_unless_asked(dirs):
    """The README's recipe on configs/tiny_cpu.yaml (lai.score.reference: global): lai.mixing would
    steer by self-influence, so it is refused in one line naming the settings that fix it; with
    val data and lai.score.reference=val (or auto) it goes ahead, and lai.mixing.without_val=true
    allows the global reference on purpose. The dry run names the reference in force."""

    from pipeline.config import load_config
    from pipeline.train.runplan import reference_note
    tiny = ROOT / "configs" / "tiny_cpu.yaml"
    two = f"data.sources=[{{path: '{dirs[0]}', weight: 1}}, {{path: '{dirs[1]}', weight: 1}}]"
    val = f"data.val_sources=[{{path: '{dirs[2]}', weight: 1}}]"
    with pytest.raises(UserError) as e:
        load_config(tiny, [two, val, "lai.mixing.kind=value"])
    assert str(e.value) == (
        "lai.mixing.kind: value steers the source weights towards the reference, and lai.score.reference is "
        "'global': the training batch itself (self-influence), not a goal; set "
        "lai.score.reference=val, or lai.mixing.without_val=true to mix by 'global' anyway")
    with pytest.raises(UserError, match=r"^lai.mixing.kind: .*lai.score.reference=auto resolves to 'global' "
                       r"\(the run has no val data\).*set data.val_sources \(or prepare"):
        load_config(tiny, [two, "lai.score.reference=auto", "lai.mixing.kind=value"])
    for ref in ("val", "auto"):
        cfg = load_config(tiny, [two, val, f"lai.score.reference={ref}", "lai.mixing.kind=value"])
        assert cfg.lai.score.reference == "val"
        assert reference_note(cfg) == "lai reference: val (the val split of data.val_sources)"
    cfg = load_config(tiny, [two, "lai.mixing.kind=value", "lai.mixing.without_val=true"])
    assert cfg.lai.score.reference == "global" and reference_note(cfg).startswith(
        "lai reference: global (the global micro-batch itself: self-influence)")


def test_source_val_sets(tmp_path):
    """val/<source>/loss covers each val source and each training source with a val split long
    enough for a sample (a shorter one is left out, not an error); nothing when that is a single
    directory (its loss is val/loss) or with train.eval_per_source=false."""

    from pipeline.config import load_config
    from pipeline.train.runtime import DistInfo
    from pipeline.train.setup import open_data
    tiny = ROOT / "configs" / "tiny_cpu.yaml"
    goal, a, b = (make_data_dir(tmp_path / n, random_docs(20, seed=i), source=n,
                                val_docs=random_docs(n_val, seed=9, min_len=m, max_len=m))
                  for i, (n, n_val, m) in enumerate([("goal", 4, 40), ("a", 4, 40), ("b", 1, 3)]))

    def sets(sources, val=(), *more):
        listed = ", ".join(f"{{path: '{d}'}}" for d in sources)
        vals = ", ".join(f"{{path: '{d}'}}" for d in val)
        cfg = load_config(tiny, [f"data.sources=[{listed}]", f"data.val_sources=[{vals}]",
                                 "data.seq_len=16", *more])
        return sorted(open_data(cfg, DistInfo(0, 1, 0, torch.device("cpu"))).val_sets)
    assert sets([a, b], [goal]) == ["a", "goal"]          # b's val split: 4 tokens < 17
    assert sets([a, goal]) == ["a", "goal"]
    assert sets([a], [a]) == [] and sets([b], [goal]) == []
    assert sets([a, b], [goal], "train.eval_per_source=false") == []

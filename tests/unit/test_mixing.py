"""Source mixing (lai.mixing): the exponentiated-gradient update (lai.mixer=value) and the EXP3
loss bandit (lai.mixer=loss_bandit) against hand computations and plain-float recursions, the
time-average against the floor-to-floor swing of an alternating reward, the deterministic
allocation of each global micro-batch to sources (credit carried, per-source
counters), the loader following changing weights and resuming bit for bit (also with another
world size), and 2 gloo ranks computing the same weights as one process on the concatenated
batch, also after resuming that state in one process. The trainer end to end:
tests/test_train_mixing.py."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from support import ROOT
from support.datagen import make_data_dir, random_docs
from pipeline.comm import free_port
from pipeline.data import PackedDataset, RankLoader
from pipeline.data.mixture import DynamicMixture
from pipeline.errors import UserError
from pipeline.lai import LAISettings, SourceMixer
from pipeline.lai.mixing import exploration

L = 16


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def no_loss(n: int) -> torch.Tensor:
    return torch.full((n,), float("nan"))


# ---------------------------------------------------------------- the EG update

def test_eg_update_by_hand():
    """Two equal sources, mean z-scores +1 / -1, eta = ln(2)/2: q = (2/3, 1/3); floor 1/4 keeps a
    quarter of the initial (1/2, 1/2): p = (5/8, 3/8). The next window sees only source 0 at
    +2 (source 1 keeps m = -1): with ema 1/2, m = (3/2, -1), q ~ (2/3 * 2^(3/4), 1/3 * 2^(-1/2))."""
    mx = SourceMixer([1.0, 1.0], eta=math.log(2) / 2, ema=0.0, floor=0.25, every=1)
    mx.observe(1, torch.tensor([0, 1, 0, 1]), f64([1.5, -1.0, 0.5, -1.0]), no_loss(4))
    np.testing.assert_allclose(mx.end_step(1), [5 / 8, 3 / 8], rtol=1e-15)
    mx.ema = 0.5
    mx.observe(2, torch.tensor([0, 0, 1]), f64([2.0, 2.0, float("nan")]), no_loss(3))  # NaN: unset
    a, b = 2 / 3 * 2 ** 0.75, 1 / 3 * 2 ** -0.5
    q = np.array([a, b]) / (a + b)
    np.testing.assert_allclose(mx.end_step(2), 0.75 * q + 0.25 * np.array([0.5, 0.5]), rtol=1e-14)
    np.testing.assert_allclose(mx.m, [1.5, -1.0], rtol=1e-15)
    assert [h[0] for h in mx.history] == [0, 1, 2]


def reference_weights(w0, windows, eta, ema, floor):
    """The EG recursion of the module doc in plain Python floats, one window list per update:
    windows[u] = [(source, value), ...]."""
    w0 = [w / sum(w0) for w in w0]
    m, logq, out = [0.0] * len(w0), [math.log(w) for w in w0], []
    for window in windows:
        for s in range(len(w0)):
            vals = [v for src, v in window if src == s and math.isfinite(v)]
            if vals:
                m[s] = ema * m[s] + (1 - ema) * (sum(vals) / len(vals))
            logq[s] += eta * m[s]
        z = [math.exp(x - max(logq)) for x in logq]
        out.append([(1 - floor) * zi / sum(z) + floor * wi for zi, wi in zip(z, w0)])
    return out


def test_eg_update_matches_the_recursion_with_warmup_and_cadence():
    """Warmup 3 (its values ignored), an update every 2 steps over both steps' micro-batches,
    NaNs left out, a source missing from a window, against the plain-float recursion."""
    rng = np.random.default_rng(0)
    w0, eta, ema, floor = [3.0, 1.0, 2.0], 0.7, 0.6, 0.1
    mx = SourceMixer(w0, eta=eta, ema=ema, floor=floor, every=2, warmup_steps=3)
    windows, window, got = [], [], []
    for step in range(1, 12):
        for _ in range(2):                                  # two micro-steps
            src = rng.integers(0, 2 if step in (6, 7) else 3, size=5)   # source 2 absent 6-7
            v = rng.normal(size=5) + src
            v[rng.random(5) < 0.2] = float("nan")
            mx.observe(step, torch.from_numpy(src), torch.from_numpy(v), no_loss(5))
            if step > 3:
                window += list(zip(src.tolist(), v.tolist()))
        p = mx.end_step(step)
        assert (p is not None) == (step > 3 and (step - 3) % 2 == 0), step
        if p is not None:
            windows.append(window)
            window = []
            got.append(p)
    want = reference_weights(w0, windows, eta, ema, floor)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-12)
    assert np.allclose([sum(p) for p in got], 1.0) and got[-1][2] > w0[2] / 6    # source 2 gained
    assert min(min(p[i] / (floor * w0[i] / 6) for i in range(3)) for p in got) >= 1 - 1e-12


def test_time_average_by_hand():
    """average=True: the loader's weights are the mean of p_now over w0 and the updates. The EG
    example above: p_now (5/8, 3/8) after update 1 -> sampled (1/2 + 5/8)/2 = 9/16; a second
    update with mean z-scores (1/2, -1/2) (ema 0: m = x): q ~ (2/3 * 2^(1/4), 1/3 * 2^(-1/4))."""
    mx = SourceMixer([1.0, 1.0], eta=math.log(2) / 2, ema=0.0, floor=0.25, every=1, average=True)
    mx.observe(1, torch.tensor([0, 1]), f64([1.0, -1.0]), no_loss(2))
    np.testing.assert_allclose(mx.end_step(1), [9 / 16, 7 / 16], rtol=1e-15)
    np.testing.assert_allclose(mx.now, [5 / 8, 3 / 8], rtol=1e-15)
    mx.observe(2, torch.tensor([0, 1]), f64([0.5, -0.5]), no_loss(2))
    a, b = 2 / 3 * 2 ** 0.25, 1 / 3 * 2 ** -0.25
    p2 = 0.75 * np.array([a, b]) / (a + b) + 0.125
    np.testing.assert_allclose(mx.end_step(2), (np.array([0.5, 0.5]) + [5 / 8, 3 / 8] + p2) / 3,
                               rtol=1e-14)
    assert mx.history[-1][1:] == mx.weights.tolist() and mx.history_now[-1] == mx.now.tolist()


def test_exploration_rate():
    """EXP3's e_u = min(1/K, sqrt(ln K / (K u))): 1/K until u >= K ln K."""
    assert exploration(0, 3) == exploration(3, 3) == 1 / 3
    assert exploration(4, 3) == pytest.approx(math.sqrt(math.log(3) / 12))
    assert exploration(1000, 2) == pytest.approx(math.sqrt(math.log(2) / 2000))


def test_loss_bandit_by_hand():
    """Two equal sources, ema 1/2, floor 0. Update 1: mean losses (3, 1) drawn with p = (1/2,
    1/2): x / p = (6, 2), m = (3, 1); e_1 = min(1/2, sqrt(ln 2 / 2)) = 1/2: f = K e_1 = 1, p = w0.
    Update 2: losses (2, 2): m = (3.5, 2.5); log q = log w0 + e_1 m: q_0 = sigmoid(1/2);
    e_2 = sqrt(ln 2 / 4): p = (1 - 2 e_2) q + e_2 (ODM's policy)."""
    mx = SourceMixer([1.0, 1.0], eta=9.9, ema=0.5, floor=0.0, every=1, mixer="loss_bandit")
    mx.observe(1, torch.tensor([0, 1, 0]), no_loss(3), f64([2.0, 1.0, 4.0]))
    np.testing.assert_allclose(mx.end_step(1), [0.5, 0.5], rtol=1e-15)
    np.testing.assert_allclose(mx.m, [3.0, 1.0], rtol=1e-15)
    mx.observe(2, torch.tensor([0, 1]), f64([5.0, -5.0]), f64([2.0, 2.0]))   # values ignored
    e2, q0 = math.sqrt(math.log(2) / 4), 1 / (1 + math.exp(-0.5))
    want = [(1 - 2 * e2) * q0 + e2, (1 - 2 * e2) * (1 - q0) + e2]
    np.testing.assert_allclose(mx.end_step(2), want, rtol=1e-14)
    np.testing.assert_allclose(mx.arms()["loss"], [2.0, 2.0])
    np.testing.assert_allclose(mx.arms()["sequences"], [3, 2])


def reference_bandit(w0, windows, ema, floor):
    """The loss bandit of the module doc in plain Python floats: windows[u] = [(source, loss)]."""
    k, w0 = len(w0), [w / sum(w0) for w in w0]
    eps = lambda u: 1 / k if u == 0 else min(1 / k, math.sqrt(math.log(k) / (k * u)))  # noqa: E731
    m, p, out = [0.0] * k, list(w0), []
    for u, window in enumerate(windows, start=1):
        for s in range(k):
            vals = [v for src, v in window if src == s]
            if vals:
                m[s] = ema * m[s] + (1 - ema) * (sum(vals) / len(vals)) / p[s]
        logq = [math.log(w) + eps(u - 1) * ms for w, ms in zip(w0, m)]
        z = [math.exp(x - max(logq)) for x in logq]
        f = max(floor, k * eps(u))
        p = [(1 - f) * zi / sum(z) + f * wi for zi, wi in zip(z, w0)]
        out.append(p)
    return out


def test_loss_bandit_matches_the_recursion():
    """Unequal initial weights, a cadence of 2, a floor that binds once exploration decays, a
    source missing from a window: against the plain-float recursion. The source with the
    highest loss gains weight (ODM's reward), and without LAI values (all NaN) it still mixes."""
    rng = np.random.default_rng(4)
    w0 = [2.0, 1.0, 1.0]
    mx = SourceMixer(w0, eta=0.1, ema=0.8, floor=0.3, every=2, mixer="loss_bandit")
    windows, window, got = [], [], []
    for step in range(1, 41):
        src = rng.integers(0, 2 if step in (5, 6) else 3, size=6)
        loss = 2.0 + src + 0.1 * rng.normal(size=6)
        mx.observe(step, torch.from_numpy(src), no_loss(6), torch.from_numpy(loss))
        window += list(zip(src.tolist(), loss.tolist()))
        if (p := mx.end_step(step)) is not None:
            windows.append(window)
            window = []
            got.append(p)
    np.testing.assert_allclose(np.array(got), np.array(reference_bandit(w0, windows, 0.8, 0.3)),
                               rtol=1e-12)
    assert got[-1][2] > w0[2] / 4 and got[-1][0] < w0[0] / 4       # the highest loss gained
    assert min(p[0] for p in got) >= 0.3 * 0.5 - 1e-12


def alternating_run(average: bool, updates: int = 1000, period: int = 100) -> np.ndarray:
    """Source 0's mean z-score is +1 for a quarter period, then flips sign every half period
    (source 1 the opposite): what a val set drawn from the mix does to a source as it goes from
    under- to over-trained. The sampled weight of source 0 after every update."""
    mx = SourceMixer([1.0, 1.0], eta=0.1, ema=0.9, floor=0.1, every=1, average=average)
    out = []
    for u in range(1, updates + 1):
        sign = 1.0 if ((u + period // 4) // (period // 2)) % 2 == 0 else -1.0
        mx.observe(u, torch.tensor([0, 1]), f64([sign, -sign]), no_loss(2))
        out.append(mx.end_step(u)[0])
    return np.array(out)


def test_time_average_stays_off_the_floor_where_the_latest_weights_swing():
    """The same alternating reward: the latest weights (the old rule) swing from floor to floor
    (0.068 .. 0.925; a floor of 0.1 keeps 0.05 of each source); the time-average stays away from
    both floors (0.48 .. 0.80, the maximum in the first half period) and settles to 0.5 +- 0.018
    over the last half of the run."""
    old, new = alternating_run(False), alternating_run(True)
    assert old[500:].min() < 0.07 and old[500:].max() > 0.92
    assert 0.45 < new.min() and new.max() < 0.81
    assert np.abs(new[500:] - 0.5).max() < 0.02


def test_mixer_state_round_trip_continues_exactly():
    a = SourceMixer([1.0, 2.0], eta=0.3, ema=0.5, floor=0.2, every=3, average=True)
    rng = np.random.default_rng(1)
    feed = [(torch.from_numpy(rng.integers(0, 2, 6)), torch.from_numpy(rng.normal(size=6)),
             torch.from_numpy(rng.random(6) + 2)) for _ in range(10)]
    for step in range(1, 5):
        a.observe(step, *feed[step - 1])
        a.end_step(step)
    b = SourceMixer([1.0, 2.0], eta=0.3, ema=0.5, floor=0.2, every=3, average=True)
    b.load_state_dict(a.state_dict())
    for step in range(5, 11):
        for mx in (a, b):
            mx.observe(step, *feed[step - 1])
            mx.end_step(step)
    assert a.history == b.history and a.history_now == b.history_now
    assert np.array_equal(a.weights, b.weights) and len(a.history) == 4
    with pytest.raises(UserError, match="mixing state"):
        SourceMixer([1.0, 1.0], eta=0.3, ema=0.5, floor=0.2, every=3).load_state_dict(a.state_dict())


@pytest.mark.parametrize("override, message", [
    (dict(mixing=True, enabled=False, filter="none"), "lai.mixing: needs lai.enabled=true"),
    (dict(mixing_eta=-1.0), "lai.mixing_eta: must be a finite number >= 0"),
    (dict(mixing_ema=1.0), r"lai.mixing_ema: must be in \[0, 1\)"),
    (dict(mixing_floor=1.5), r"lai.mixing_floor: must be in \[0, 1\]"),
    (dict(mixing_every=0), "lai.mixing_every: must be >= 1"),
    (dict(mixer="bandit"), "lai.mixer: 'bandit' is not one of value, loss_bandit"),
])
def test_settings_errors(override, message):
    with pytest.raises(ValueError, match=message) as e:
        LAISettings(**override).resolved()
    assert "\n" not in str(e.value)


def test_loss_bandit_needs_neither_lai_nor_a_val_reference():
    s = LAISettings(mixing=True, mixer="loss_bandit", enabled=False, filter="none").resolved()
    assert not s.mixing_average and SourceMixer.from_settings(s, [1, 1]).rule.reward == 2
    with pytest.raises(ValueError, match="lai.mixing: steers"):
        LAISettings(mixing=True, reference="global").resolved()
    assert LAISettings(mixing=True, mixer="loss_bandit", reference="global").resolved()


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


# ---------------------------------------------------------------- 2 ranks == 1 process

SPLIT = [5, 3]      # unequal local batches


def feed(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(step)
    src = rng.integers(0, 3, size=sum(SPLIT))
    v = rng.normal(size=sum(SPLIT)) + 0.5 * src
    v[0] = float("nan")
    return torch.from_numpy(src), torch.from_numpy(v), torch.from_numpy(rng.random(sum(SPLIT)))


def make_mixer(mixer: str) -> SourceMixer:
    return SourceMixer([1.0, 1.0, 2.0], eta=0.4, ema=0.7, floor=0.15, every=2, warmup_steps=1,
                       mixer=mixer, average=True)


def mixer_run(mixer: str, rank: int = 0, world: int = 1, steps=range(1, 10), mx=None,
              save_at: int = 0, out_dir: str = "") -> SourceMixer:
    """Feed `steps` to `mx` (a new mixer by default), this rank's slice of each global batch."""
    mx = mx or make_mixer(mixer)
    lo = sum(SPLIT[:rank]) if world > 1 else 0
    hi = lo + SPLIT[rank] if world > 1 else sum(SPLIT)
    for step in steps:
        src, v, loss = feed(step)
        mx.observe(step, src[lo:hi], v[lo:hi], loss[lo:hi])
        mx.end_step(step)
        if step == save_at:
            torch.save(mx.state_dict(), os.path.join(out_dir, f"{mixer}-rank{rank}-step{step}.pt"))
    return mx


def rank_worker(rank, port, out_dir):
    import torch.distributed as dist
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for mixer in ("value", "loss_bandit"):
            mx = mixer_run(mixer, rank, 2, save_at=5, out_dir=out_dir)
            torch.save(mx.state_dict(), os.path.join(out_dir, f"{mixer}-rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_also_resumed_on_one(tmp_path):
    """Both mixers: 2 gloo ranks (unequal local batches) end with the state of one process fed
    the concatenated batches, bit for bit; the 2-rank state saved at step 5 (mid-window: every 2
    after warmup 1), resumed in one process, continues to the same state (elastic resume)."""
    import torch.multiprocessing as mp
    mp.spawn(rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for mixer in ("value", "loss_bandit"):
        one = mixer_run(mixer).state_dict()
        for r in range(2):
            assert torch.load(tmp_path / f"{mixer}-rank{r}.pt", weights_only=False) == one
        resumed = make_mixer(mixer)
        saved = torch.load(tmp_path / f"{mixer}-rank0-step5.pt", weights_only=False)
        resumed.load_state_dict(saved)
        assert mixer_run(mixer, steps=range(6, 10), mx=resumed).state_dict() == one
        assert len(one["history"]) == 1 + 4 and one["sequences"] == [sum(
            (feed(s)[0] == i).sum().item() for s in range(1, 10)) for i in range(3)]


def test_config_rules(dirs):
    """lai.mixing needs 2+ sources (one line); it decides the seq_id layout, so switching it on
    resume is refused while its step size may change; RUN/data.json says it is on."""

    from pipeline.config import load_config
    from pipeline.train.resume import resume_changes
    from pipeline.train.setup import data_json
    tiny = ROOT / "configs" / "tiny_cpu.yaml"

    def cfg(*overrides, sources=dirs[:2]):
        listed = ", ".join(f"{{path: '{d}', weight: 1}}" for d in sources)
        return load_config(tiny, [f"data.sources=[{listed}]", "lai.mixing_without_val=true",
                                  *overrides])
    with pytest.raises(UserError, match=r"^lai.mixing: needs at least 2 data.sources to mix, got 1$"):
        cfg("lai.mixing=true", sources=dirs[:1]).validate()
    on = cfg("lai.mixing=true").validate()
    assert data_json(on)["mixing"] is True and "mixing" not in data_json(cfg())
    old = {**on.to_dict(), "world": 2}
    breaking, allowed = resume_changes(old, {**cfg().validate().to_dict(), "world": 2})
    assert breaking == ["lai.mixing: True -> False"] and allowed == []
    breaking, allowed = resume_changes(old, {**cfg("lai.mixing=true", "lai.mixing_eta=0.3")
                                             .validate().to_dict(), "world": 2})
    assert breaking == [] and allowed == ["lai.mixing_eta: 0.1 -> 0.3"]


def test_mixing_refuses_a_self_influence_reference_unless_asked(dirs):
    """The README's recipe on configs/tiny_cpu.yaml (lai.reference: global): lai.mixing would
    steer by self-influence, so it is refused in one line naming the settings that fix it; with
    val data and lai.reference=val (or auto) it goes ahead, and lai.mixing_without_val=true
    allows the global reference on purpose. The dry run names the reference in force."""

    from pipeline.config import load_config
    from pipeline.train.runplan import reference_note
    tiny = ROOT / "configs" / "tiny_cpu.yaml"
    two = f"data.sources=[{{path: '{dirs[0]}', weight: 1}}, {{path: '{dirs[1]}', weight: 1}}]"
    val = f"data.val_sources=[{{path: '{dirs[2]}', weight: 1}}]"
    with pytest.raises(UserError) as e:
        load_config(tiny, [two, val, "lai.mixing=true"])
    assert str(e.value) == (
        "lai.mixing: steers the source weights towards the reference, and lai.reference is "
        "'global': the training batch itself (self-influence), not a goal; set "
        "lai.reference=val, or lai.mixing_without_val=true to mix by 'global' anyway")
    with pytest.raises(UserError, match=r"^lai.mixing: .*lai.reference=auto resolves to 'global' "
                       r"\(the run has no val data\).*set data.val_sources \(or prepare"):
        load_config(tiny, [two, "lai.reference=auto", "lai.mixing=true"])
    for ref in ("val", "auto"):
        cfg = load_config(tiny, [two, val, f"lai.reference={ref}", "lai.mixing=true"])
        assert cfg.lai.reference == "val"
        assert reference_note(cfg) == "lai reference: val (the val split of data.val_sources)"
    cfg = load_config(tiny, [two, "lai.mixing=true", "lai.mixing_without_val=true"])
    assert cfg.lai.reference == "global" and reference_note(cfg).startswith(
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

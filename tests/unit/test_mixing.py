"""Source mixing (lai.mixing): the exponentiated-gradient update (lai.mixing.kind=value) and the EXP3
loss bandit (lai.mixing.kind=loss_bandit) against hand computations and plain-float recursions, the
time-average against the floor-to-floor swing of an alternating reward, the mixer state's round
trip and the mixing settings' errors. The data side (allocation, loader): test_mixing_data.py;
2 gloo ranks equal one process: e2e/test_mixing_ranks.py; the trainer end to end:
e2e/test_train_mixing.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.lai import LAISettings, SourceMixer
from pipeline.lai import MixingSettings, ScoreSettings
from pipeline.lai.selection.mixing import exploration


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def no_loss(n: int) -> torch.Tensor:
    return torch.full((n,), float("nan"))


# ---------------------------------------------------------------- the EG update

def test_eg_update_by_hand():
    """Two equal sources, mean z-scores +1 / -1, eta = ln(2)/2: q = (2/3, 1/3); floor 1/4 keeps a
    quarter of the initial (1/2, 1/2): p = (5/8, 3/8). The next window sees only source 0 at
    +2 (source 1 keeps m = -1): with ema 1/2, m = (3/2, -1), q ~ (2/3 * 2^(3/4), 1/3 * 2^(-1/2))."""
    mx = SourceMixer([1.0, 1.0], MixingSettings(kind="value", eta=math.log(2) / 2, ema=0.0,
                                                floor=0.25, every=1))
    mx.observe(1, torch.tensor([0, 1, 0, 1]), f64([1.5, -1.0, 0.5, -1.0]), no_loss(4))
    np.testing.assert_allclose(mx.end_step(1), [5 / 8, 3 / 8], rtol=1e-15)
    mx.s.ema = 0.5
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
    mx = SourceMixer(w0, MixingSettings(kind="value", eta=eta, ema=ema, floor=floor, every=2),
                     warmup_steps=3)
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
    mx = SourceMixer([1.0, 1.0], MixingSettings(kind="value", eta=math.log(2) / 2, ema=0.0,
                                                floor=0.25, every=1, average=True))
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
    mx = SourceMixer([1.0, 1.0], MixingSettings(kind="loss_bandit", eta=9.9, ema=0.5, floor=0.0,
                                                every=1))
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
    mx = SourceMixer(w0, MixingSettings(kind="loss_bandit", eta=0.1, ema=0.8, floor=0.3, every=2))
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
    mx = SourceMixer([1.0, 1.0], MixingSettings(kind="value", eta=0.1, ema=0.9, floor=0.1, every=1,
                                                average=average))
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
    a = SourceMixer([1.0, 2.0], MixingSettings(kind="value", eta=0.3, ema=0.5, floor=0.2, every=3,
                                               average=True))
    rng = np.random.default_rng(1)
    feed = [(torch.from_numpy(rng.integers(0, 2, 6)), torch.from_numpy(rng.normal(size=6)),
             torch.from_numpy(rng.random(6) + 2)) for _ in range(10)]
    for step in range(1, 5):
        a.observe(step, *feed[step - 1])
        a.end_step(step)
    b = SourceMixer([1.0, 2.0], MixingSettings(kind="value", eta=0.3, ema=0.5, floor=0.2, every=3,
                                               average=True))
    b.load_state_dict(a.state_dict())
    for step in range(5, 11):
        for mx in (a, b):
            mx.observe(step, *feed[step - 1])
            mx.end_step(step)
    assert a.history == b.history and a.history_now == b.history_now
    assert np.array_equal(a.weights, b.weights) and len(a.history) == 4
    with pytest.raises(UserError, match="mixing state"):
        SourceMixer([1.0, 1.0], MixingSettings(kind="value", eta=0.3, ema=0.5, floor=0.2,
                                               every=3)).load_state_dict(a.state_dict())


@pytest.mark.parametrize("override, message", [
    (dict(kind="value", enabled=False), "lai.mixing.kind: value needs lai.enabled=true"),
    (dict(eta=-1.0), "lai.mixing.eta: must be a finite number >= 0"),
    (dict(ema=1.0), r"lai.mixing.ema: must be in \[0, 1\)"),
    (dict(floor=1.5), r"lai.mixing.floor: must be in \[0, 1\]"),
    (dict(every=0), "lai.mixing.every: must be >= 1"),
    (dict(kind="bandit"), "lai.mixing.kind: 'bandit' is not one of none, value, loss_bandit"),
    (dict(groups=True), "lai.mixing.groups: needs lai.mixing.kind=value or loss_bandit"),
])
def test_settings_errors(override, message):
    enabled = override.pop("enabled", True)
    with pytest.raises(ValueError, match=message) as e:
        LAISettings(enabled=enabled, mixing=MixingSettings(**override)).resolved()
    assert "\n" not in str(e.value)


def test_loss_bandit_needs_neither_lai_nor_a_val_reference():
    s = LAISettings(enabled=False, mixing=MixingSettings(kind="loss_bandit")).resolved()
    assert not s.mixing.average and SourceMixer([1, 1], s.mixing).rule.reward == 2
    with pytest.raises(ValueError, match="lai.mixing.kind: value steers"):
        LAISettings(score=ScoreSettings(reference="global"),
                    mixing=MixingSettings(kind="value")).resolved()
    assert LAISettings(score=ScoreSettings(reference="global"),
                       mixing=MixingSettings(kind="loss_bandit")).resolved()

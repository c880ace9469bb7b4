"""FilterPolicy rules, each with a case where it decides and one where it does not."""
import pytest
import torch

from pipeline.lai import FilterPolicy


def v(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_threshold_excludes_values_at_or_below():
    vals = v(0.5, -1.0, 0.0, 0.2)
    assert FilterPolicy(max_exclude_frac=1.0).mask(vals, 0).tolist() == [True, False, False, True]
    assert FilterPolicy(threshold=0.3, max_exclude_frac=1.0).mask(vals, 0).tolist() == \
        [True, False, False, False]
    assert FilterPolicy(threshold=-2.0).mask(vals, 0).all()


def test_warmup_keeps_everything_before_warmup_steps():
    policy = FilterPolicy(warmup_steps=10, max_exclude_frac=0.5)
    vals = v(-1.0, 1.0, 2.0, 3.0)
    assert policy.mask(vals, 9).all()
    assert policy.mask(vals, 10).tolist() == [False, True, True, True]


def test_max_exclude_frac_keeps_best_valued_beyond_cap():
    vals = v(-3.0, -1.0, -2.0, -4.0, 1.0, 2.0)
    assert FilterPolicy(max_exclude_frac=0.5).mask(vals, 0).tolist() == \
        [False, True, False, False, True, True]
    assert FilterPolicy(max_exclude_frac=1.0).mask(vals, 0).tolist() == \
        [False, False, False, False, True, True]
    assert FilterPolicy(max_exclude_frac=0.0).mask(vals, 0).all()


def test_never_excludes_whole_batch():
    vals = v(-1.0, -3.0, -2.0)
    keep = FilterPolicy(max_exclude_frac=1.0).mask(vals, 0)
    assert keep.tolist() == [True, False, False]          # the best-valued one survives
    assert FilterPolicy(max_exclude_frac=1.0).mask(v(-1.0), 0).tolist() == [True]


def test_ties_broken_by_global_position():
    vals = v(-1.0, 0.5, -1.0, -1.0)
    assert FilterPolicy(max_exclude_frac=0.5).mask(vals, 0).tolist() == \
        [False, True, False, True]
    assert FilterPolicy(max_exclude_frac=0.25).mask(vals, 0).tolist() == \
        [False, True, True, True]


@pytest.mark.parametrize("kwargs", [dict(threshold=float("nan")), dict(warmup_steps=-1),
                                    dict(max_exclude_frac=1.5)])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match=f"^lai.{next(iter(kwargs))}: "):
        FilterPolicy(**kwargs)


def test_one_default_and_range_with_the_run_config():
    """FilterPolicy and the lai settings share the cap's default and its range [0, 1]."""
    from pipeline.lai import LAISettings
    assert FilterPolicy().max_exclude_frac == LAISettings().max_exclude_frac == 0.1
    LAISettings(max_exclude_frac=1.0).resolved()
    with pytest.raises(ValueError, match="^lai.max_exclude_frac: "):
        LAISettings(max_exclude_frac=1.01).resolved()


def test_bad_values():
    with pytest.raises(ValueError, match="non-finite"):
        FilterPolicy().mask(v(1.0, float("nan")), 0)
    with pytest.raises(ValueError, match="1-D"):
        FilterPolicy().mask(torch.zeros(0), 0)

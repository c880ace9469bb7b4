"""FilterPolicy rules, each with a case where it decides and one where it does not; the start
line / dry run state the budget, the remaining dependence on the split and when nothing can be
excluded (pipeline.lai.selection.policy.describe)."""
import pytest
import torch

from pipeline.lai import FilterPolicy
from pipeline.lai import FilterSettings, ScoreSettings


def v(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_threshold_excludes_values_at_or_below():
    vals = v(0.5, -1.0, 0.0, 0.2)
    assert FilterPolicy(FilterSettings(max_exclude_frac=1.0, threshold=0.0), 0).mask(vals,
                                                                                     0).tolist() == [True, False, False, True]
    assert FilterPolicy(FilterSettings(threshold=0.3, max_exclude_frac=1.0), 0).mask(vals,
                                                                                     0).tolist() == \
        [True, False, False, False]
    assert FilterPolicy(FilterSettings(threshold=-2.0), 0).mask(vals, 0).all()


def test_warmup_keeps_everything_before_warmup_steps():
    policy = FilterPolicy(FilterSettings(max_exclude_frac=0.5, threshold=0.0), 10)
    vals = v(-1.0, 1.0, 2.0, 3.0)
    assert policy.mask(vals, 9).all()
    assert policy.mask(vals, 10).tolist() == [False, True, True, True]


def test_max_exclude_frac_keeps_best_valued_beyond_cap():
    vals = v(-3.0, -1.0, -2.0, -4.0, 1.0, 2.0)
    assert FilterPolicy(FilterSettings(max_exclude_frac=0.5, threshold=0.0), 0).mask(vals,
                                                                                     0).tolist() == \
        [False, True, False, False, True, True]
    assert FilterPolicy(FilterSettings(max_exclude_frac=1.0, threshold=0.0), 0).mask(vals,
                                                                                     0).tolist() == \
        [False, False, False, False, True, True]
    assert FilterPolicy(FilterSettings(max_exclude_frac=0.0, threshold=0.0), 0).mask(vals, 0).all()


def test_never_excludes_whole_batch():
    vals = v(-1.0, -3.0, -2.0)
    keep = FilterPolicy(FilterSettings(max_exclude_frac=1.0, threshold=0.0), 0).mask(vals, 0)
    assert keep.tolist() == [True, False, False]          # the best-valued one survives
    assert FilterPolicy(FilterSettings(max_exclude_frac=1.0, threshold=0.0), 0).mask(v(-1.0),
                                                                                     0).tolist() == [True]


def test_ties_broken_by_global_position():
    vals = v(-1.0, 0.5, -1.0, -1.0)
    assert FilterPolicy(FilterSettings(max_exclude_frac=0.5, threshold=0.0), 0).mask(vals,
                                                                                     0).tolist() == \
        [False, True, False, True]
    assert FilterPolicy(FilterSettings(max_exclude_frac=0.25, threshold=0.0), 0).mask(vals,
                                                                                      0).tolist() == \
        [False, True, True, True]


@pytest.mark.parametrize("kwargs, key", [(dict(threshold=float("nan")), "filter.threshold"),
                                         (dict(warmup_steps=-1), "warmup_steps"),
                                         (dict(max_exclude_frac=1.5), "filter.max_exclude_frac")])
def test_bad_settings(kwargs, key):
    warmup = kwargs.pop("warmup_steps", 0)
    with pytest.raises(ValueError, match=f"^lai.{key}: "):
        FilterPolicy(FilterSettings(**{"threshold": 0.0, **kwargs}), warmup)


def test_one_default_and_range_with_the_run_config():
    """FilterPolicy reads the lai.filter block: one default for the cap, one range [0, 1]."""
    from pipeline.lai import LAISettings
    assert FilterPolicy(FilterSettings(threshold=0.0), 0).s.max_exclude_frac \
        == LAISettings().filter.max_exclude_frac == 0.1
    LAISettings(filter=FilterSettings(max_exclude_frac=1.0)).resolved()
    with pytest.raises(ValueError, match="^lai.filter.max_exclude_frac: "):
        LAISettings(filter=FilterSettings(max_exclude_frac=1.01)).resolved()


def test_bad_values():
    with pytest.raises(ValueError, match="non-finite"):
        FilterPolicy(FilterSettings(threshold=0.0), 0).mask(v(1.0, float("nan")), 0)
    with pytest.raises(ValueError, match="1-D"):
        FilterPolicy(FilterSettings(threshold=0.0), 0).mask(torch.zeros(0), 0)


def test_describe_states_budget_dependence_and_a_filter_that_cannot_exclude():
    from pipeline.lai import LAISettings
    from pipeline.lai.selection.policy import describe
    s = LAISettings(filter=FilterSettings(kind="lai"),
                    score=ScoreSettings(reference="global")).resolved(has_documents=True)
    lines = describe(s, 16, 8, 2, 1, steps=200)
    assert lines[0].startswith("lai filter: excludes at most 1.6 sequence(s) per step")
    assert "(global micro-batch 8 = micro 8 x 1 rank(s), 2 per step) only through:" in lines[1]
    assert "the LAI values against each global micro-batch" in lines[1]
    assert len(lines) == 2
    few = describe(LAISettings(filter=FilterSettings(kind="lai",
                                                     max_exclude_frac=0.01)).resolved(), 16, 8, 1, 2, steps=200)
    assert "one every 6.25 steps" in few[0]
    off = describe(LAISettings(filter=FilterSettings(kind="lai", max_exclude_frac=0.0)).resolved(),
                   16, 8, 1, 2, steps=200)
    assert off[-1] == "warning: lai filter: cannot exclude anything in this run: " \
                      "lai.filter.max_exclude_frac is 0"
    late = describe(LAISettings(warmup_steps=20, filter=FilterSettings(kind="lai")).resolved(), 16,
                    8, 1, 2, steps=20)
    assert late[-1].endswith("lai.warmup_steps (20) >= train.steps (20)")
    assert describe(LAISettings(filter=FilterSettings(kind="none")).resolved(), 16, 8, 1, 2,
                    steps=20) == []

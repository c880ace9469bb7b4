"""Memory across epochs (pipeline.lai.selection.memory): the prior and the update equal their definitions,
a document valued harmful is down-weighted when it comes round again, the memory round-trips
through its state (on the real trainer it survives resume: e2e/test_lai_memory_resume.py)."""
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from pipeline.lai import LAISettings, Selector
from pipeline.lai import FilterSettings, MemorySettings
from pipeline.lai.selection.memory import DocumentMemory


def test_prior_and_update_follow_the_definition():
    mem = DocumentMemory([3, 2], MemorySettings(decay=0.25))
    seq_a = [(0, 0, 6), (0, 1, 2)]            # two documents of source 0
    seq_b = [(0, 1, 4), (1, 1, 4)]
    assert mem.prior([seq_a, seq_b]).tolist() == [0.0, 0.0]          # nothing seen yet
    mem.observe([seq_a], torch.tensor([-2.0]))
    mem.observe([seq_b], torch.tensor([1.0]))                          # doc (0,1) seen twice
    m01 = 0.25 * -2.0 + 0.75 * 1.0
    assert mem.table[0][0].item() == -2.0 and math.isclose(mem.table[0][1].item(), m01)
    assert mem.table[1][1].item() == 1.0 and math.isnan(mem.table[1][0].item())
    prior = mem.prior([seq_a, seq_b, [(1, 0, 5)]])
    assert math.isclose(prior[0].item(), (6 * -2.0 + 2 * m01) / 8, rel_tol=1e-6)
    assert math.isclose(prior[1].item(), (4 * m01 + 4 * 1.0) / 8, rel_tol=1e-6)
    assert prior[2].item() == 0.0
    mem.observe([seq_a], torch.tensor([float("nan")]))                # unscored: not recorded
    assert mem.table[0][0].item() == -2.0
    again = DocumentMemory([3, 2], MemorySettings(decay=0.25))
    again.load_state_dict(mem.state_dict())
    assert all(torch.allclose(a, b, equal_nan=True) for a, b in zip(again.table, mem.table))
    with pytest.raises(ValueError, match="documents per source"):
        DocumentMemory([3], MemorySettings(decay=0.5)).load_state_dict(mem.state_dict())


class _Docs:
    """Sequence i covers document i % 4 of one source."""
    num_docs = [4]

    def document_keys(self, seq_id):
        return [(0, seq_id % 4, 10)]


def test_a_document_valued_harmful_is_down_weighted_next_time():
    s = LAISettings(filter=FilterSettings(kind="lai", normalize="zscore", threshold=-10.0,
                                          max_exclude_frac=0.5), memory=MemorySettings(weight=1.0)).resolved()
    sel = Selector(s, seed=0, documents=_Docs())
    sel.scorer = _FixedScorer(torch.tensor([-3.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    cap = SimpleNamespace(inputs=None)          # the fixed scorer ignores the forward
    first = sel.select(1, cap, None, None, torch.zeros(4), torch.arange(4))
    assert first.keep.all()                       # threshold -10: nothing excluded
    # epoch 2: the same documents, none below threshold now (z -0.58, -0.58, -0.58, 1.73):
    # document 0 carries its memory (z -1.73 at step 1) and is excluded
    sel.scorer = _FixedScorer(torch.tensor([1.0, 1.0, 1.0, 1.1], dtype=torch.float64))
    sel.policy.s = dataclasses.replace(sel.policy.s, threshold=-1.0)
    second = sel.select(2, cap, None, None, torch.zeros(4), torch.arange(4, 8))
    assert second.keep.tolist() == [False, True, True, True]
    assert (second.value_norm > -1.0).all()      # its own value alone would have kept it


class _FixedScorer:
    layers = "linear"

    def __init__(self, values):
        self.v = values

    def values(self, *args, **kwargs):
        return self.v

    def input_weights(self, cap):
        return None                               # plain LAI: no Adam factors


def test_memory_needs_normalised_lai_scores():
    with pytest.raises(ValueError, match="lai.memory.weight: "):
        LAISettings(filter=FilterSettings(kind="lai", normalize="none"),
                    memory=MemorySettings(weight=1.0)).resolved()
    with pytest.raises(ValueError, match="lai.memory.weight: "):
        LAISettings(filter=FilterSettings(kind="loss"),
                    memory=MemorySettings(weight=1.0)).resolved()
    # the defaults: memory where the documents are known, for the normalised LAI filter only
    lai = LAISettings(filter=FilterSettings(kind="lai"))
    assert lai.resolved(has_documents=True).memory.weight == 1.0
    assert lai.resolved().memory.weight == 0.0
    assert LAISettings().resolved(has_documents=True).memory.weight == 0.0   # filter none
    assert LAISettings(enabled=False,
                       filter=FilterSettings(kind="loss")).resolved(has_documents=True).memory.weight == 0
    assert LAISettings(filter=FilterSettings(kind="lai",
                                             normalize="none")).resolved(has_documents=True).memory.weight == 0
    assert [LAISettings(filter=FilterSettings(kind="lai",
                                              normalize=n)).resolved().filter.threshold for n in ("none",
                                                                                           "zscore", "rank")] \
        == [0.0, -1.0, -0.4]
    assert LAISettings(enabled=False,
                       filter=FilterSettings(kind="full_gradient")).resolved().filter.threshold == 0.0
    with pytest.raises(ValueError, match="lai.memory.decay: "):
        LAISettings(filter=FilterSettings(kind="lai", normalize="zscore"),
                    memory=MemorySettings(weight=1.0, decay=1.0)).resolved()

"""lai.weighting against brute-force autograd: the weighted step's gradient (masked_loss with
weights, one process) is the gradient of the weighted kept-token mean loss
sum_{kept j} w_j sum_t ce_{j,t} / sum_{kept j} w_j n_j on a tiny model, with uneven valid tokens
and a dropped sequence; the ledger's token weights average 1 over the kept tokens and stay within
[w_min / w_max, w_max / w_min]. (Across 2 ranks: e2e/test_train_select.py, whose runs weight.)"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from support.engine import T, V, seeded_model, tiny_cfg
from pipeline.lai import WeightingSettings

KEEP = torch.tensor([True, False, True, True, True, True])
Z = torch.tensor([-2.0, 0.5, 1.5, 0.0, float("nan"), -0.7], dtype=torch.float64)


def _batch():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (len(KEEP), T), generator=g)
    targets = torch.randint(0, V, (len(KEEP), T), generator=g)
    for j in range(len(KEEP)):
        targets[j, : (5 * j) % T] = -100             # uneven valid tokens
    return ids, targets


def test_weighted_step_equals_autograd_of_weighted_loss():
    from pipeline.comm import Comm
    from pipeline.lai import per_sequence_loss
    from pipeline.lai.selection.weighting import sequence_weights
    from pipeline.train.step import masked_loss, token_weights
    s = WeightingSettings(kind="sigmoid", temperature=0.5, min=0.25, max=3.0)
    model = seeded_model(tiny_cfg(0, "gpt2"))
    ref = copy.deepcopy(model)
    ids, tgt = _batch()
    w, n = sequence_weights(Z, s), (tgt != -100).sum(1)
    loss, stats = masked_loss(per_sequence_loss(model(input_ids=ids).logits, tgt), n, KEEP,
                              Comm.local(), w)
    loss.backward()
    ce = F.cross_entropy(ref(input_ids=ids).logits.transpose(1, 2), tgt, ignore_index=-100,
                         reduction="none").sum(1)
    wf = w.float()
    ((wf * ce)[KEEP].sum() / (wf * n)[KEEP].sum()).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-5, atol=1e-7, msg=name)
    tw = token_weights(KEEP, w, stats)               # the ledger's weight column
    assert torch.all(tw[~KEEP] == 0)
    torch.testing.assert_close((tw * n).sum(), (n * KEEP).sum().double(), rtol=1e-6, atol=0)
    assert tw[KEEP].min() >= 0.25 / 3.0 and tw[KEEP].max() <= 3.0 / 0.25


def test_weights_bounded_monotone_and_off_by_default():
    from pipeline.lai import LAISettings
    from pipeline.lai.selection.weighting import sequence_weights
    assert LAISettings().weighting.kind == "none"
    assert sequence_weights(torch.zeros(2), LAISettings().weighting) is None
    s = WeightingSettings(kind="sigmoid", min=0.5, max=2.0)
    w = sequence_weights(torch.tensor([-1e9, -1.0, 0.0, 1.0, 1e9]), s)
    assert torch.all(torch.diff(w) > 0)
    assert w[0] == 0.5 and w[-1] == 2.0 and w[2] == 1.25


def test_weighting_settings_refused_with_field_name():
    import pytest

    from pipeline.lai import LAISettings
    from pipeline.lai.selection.weighting import WeightingSettings as W
    for bad, field in ((dict(weighting=W(kind="soft")), "lai.weighting.kind"),
                       (dict(weighting=W(kind="sigmoid"), enabled=False), "lai.weighting.kind"),
                       (dict(weighting=W(temperature=0.0)), "lai.weighting.temperature"),
                       (dict(weighting=W(min=2.0, max=1.0)), "lai.weighting.min")):
        with pytest.raises(ValueError, match=f"^{field}: "):
            LAISettings(**bad).resolved()


def test_ledger_weight_column_and_older_chunks(tmp_path):
    import numpy as np

    from pipeline.format.ledger import ROW_V2, Ledger, read_ledger
    led = Ledger(tmp_path, 0)
    led.append(1, [0, 1], [0.5, -0.5], [True, False], [2.0, 3.0], [1.0, -1.0], [1.5, 0.0])
    led.close()
    old = np.zeros(2, ROW_V2)                   # a chunk written before the weight column
    old["step"], old["seq_id"], old["kept"] = 2, [2, 3], [True, False]
    np.save(tmp_path / "ledger" / "rank-00000" / "chunk-00000099.npy", old)
    assert read_ledger(tmp_path)["weight"].tolist() == [1.5, 0.0, 1.0, 0.0]

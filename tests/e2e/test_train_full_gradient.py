"""lai.filter.kind=full_gradient (the exact full-gradient upper reference) on 2 real ranks (gloo) with
real DeepSpeed engines (ZeRO 0 and 2):

- each rank's values == pipeline.lai.full_gradient_values of its slice of the concatenated global
  batch (single process, a copy of the model), j left out;
- the keep mask == FilterPolicy(threshold, warmup, cap) on those global values;
- the model is left as found: modes, weights, no .grad; the engine's gradients and update after
  the filter equal those of an engine that never ran it (same keep mask);
- ignored (-100) targets on one rank are refused on every rank (no hang);
- config: accepted without LAI, refused with ZeRO-3 in one line naming lai.filter.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.comm import Comm
from support import ROOT
from support.engine import (B, T, V, WORLD, engine_and_optimizer, run_on_ranks, seeded_model,
                            tiny_cfg)
from pipeline.lai import FilterSettings, ScoreSettings



def _sample(rank: int) -> torch.Tensor:
    """[B, T+1] token samples of `rank` (inputs x[:, :-1], targets x[:, 1:])."""
    return torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(7 + rank))


def _full(engine, stage, what):
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
    get = safe_get_full_grad if what == "grad" else (
        (lambda p: p) if stage == 0 else safe_get_full_fp32_param)
    return {n: get(p).detach().clone() for n, p in engine.module.named_parameters()}


def _train_micro(engine, rank, selector=None, keep=None):
    """One forward, (optional) full-gradient select, masked backward and step; returns keep."""
    from pipeline.lai import per_sequence_loss
    from pipeline.train.step import masked_loss
    x = _sample(rank)
    ids, tgt = x[:, :-1], x[:, 1:]
    logits = engine(input_ids=ids).logits
    losses = per_sequence_loss(logits, tgt)
    if selector is not None:
        modes = [m.training for m in engine.module.modules()]
        weights = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        _, keep, _ = selector.select(2, None, logits, tgt, losses, torch.arange(B) + rank * B,
                                  input_ids=ids, model=engine.module)
        assert [m.training for m in engine.module.modules()] == modes
        for n, p in engine.module.named_parameters():
            assert p.grad is None, f"{n}: .grad set by the full-gradient filter"
            assert torch.equal(p.detach(), weights[n]), f"{n}: changed by the filter"
    loss, _ = masked_loss(losses, torch.full((B,), T), keep, Comm.resolve())
    engine.backward(loss)
    return keep


def _check_values_and_mask(rank, stage):
    from pipeline.lai import (FilterPolicy, LAISettings, Selector, full_gradient_values,
                              per_sequence_loss)
    cfg = tiny_cfg(stage, "llama")
    model = seeded_model(cfg)
    ref_model = copy.deepcopy(model)
    ref = full_gradient_values(ref_model, torch.cat([_sample(r) for r in range(WORLD)]))
    # threshold between the 3rd and 4th value: 3 candidates, the cap (floor(0.34 * 6) = 2) binds
    thr = float(ref.sort().values[2:4].mean())
    lai_cfg = LAISettings(enabled=False, warmup_steps=1,
                          filter=FilterSettings(kind="full_gradient", threshold=thr,
                                                max_exclude_frac=0.34)).resolved()
    policy = FilterPolicy(FilterSettings(threshold=thr, max_exclude_frac=0.34), 1)
    want = policy.global_mask(ref, 1)
    assert int((~want).sum()) == 2
    mine = slice(rank * B, (rank + 1) * B)

    engine = engine_and_optimizer(cfg, model)[0]
    sel = Selector(lai_cfg, seed=0)
    x = _sample(rank)
    ids, tgt = x[:, :-1], x[:, 1:]
    logits = engine(input_ids=ids).logits
    losses = per_sequence_loss(logits, tgt)
    values, keep, _ = sel.select(2, None, logits, tgt, losses, torch.arange(B) + rank * B,
                              input_ids=ids, model=engine.module)
    assert values.dtype == torch.float64 and values.shape == (B,)
    torch.testing.assert_close(values, ref[mine], rtol=1e-5, atol=1e-12)
    assert keep.tolist() == want[mine].tolist()
    # warmup: optimizer step 1 is policy step 0 < warmup_steps = 1 -> everything kept
    _, keep1, _ = sel.select(1, None, logits, tgt, losses, torch.arange(B) + rank * B,
                          input_ids=ids, model=engine.module)
    assert keep1.all()
    # include_self: the self term joins the mean
    sel_self = Selector(LAISettings(enabled=False, filter=FilterSettings(kind="full_gradient"),
                                    score=ScoreSettings(include_self=True)).resolved(), seed=0)
    v_self, _, _ = sel_self.select(2, None, logits, tgt, losses, torch.arange(B) + rank * B,
                                input_ids=ids, model=engine.module)
    ref_self = full_gradient_values(ref_model, torch.cat([_sample(r) for r in range(WORLD)]),
                                    include_self=True)
    torch.testing.assert_close(v_self, ref_self[mine], rtol=1e-5, atol=1e-12)
    # a -100 target on rank 1 only: refused on both ranks
    from pipeline.errors import UserError
    bad = tgt.clone()
    if rank == 1:
        bad[0, 3] = -100
    with pytest.raises(UserError, match=r"^lai\.filter\.kind: .*-100"):
        sel.select(2, None, logits, bad, losses, torch.arange(B) + rank * B,
                   input_ids=ids, model=engine.module)
    engine.destroy()


def _check_training_unchanged(rank, stage):
    """The engine that ran the filter trains exactly like one that did not (same keep)."""
    from pipeline.lai import LAISettings, Selector
    cfg = tiny_cfg(stage, "llama")
    model = seeded_model(cfg)
    twin = copy.deepcopy(model)
    sel = Selector(LAISettings(enabled=False, filter=FilterSettings(kind="full_gradient",
                                                                    max_exclude_frac=0.5)).resolved(), seed=0)
    a = engine_and_optimizer(cfg, model)[0]
    a.train()
    keep = _train_micro(a, rank, selector=sel)
    grads_a = _full(a, stage, "grad")
    a.step()
    params_a = _full(a, stage, "param")
    a.destroy()
    b = engine_and_optimizer(cfg, twin)[0]
    b.train()
    _train_micro(b, rank, keep=keep)
    grads_b = _full(b, stage, "grad")
    b.step()
    params_b = _full(b, stage, "param")
    b.destroy()
    for n in grads_b:
        assert torch.equal(grads_a[n], grads_b[n]), f"ZeRO {stage}: grad of {n} differs"
        assert torch.equal(params_a[n], params_b[n]), f"ZeRO {stage}: {n} differs after step"


def _checks(rank: int):
    _check_values_and_mask(rank, 0)
    for stage in (0, 2):
        _check_training_unchanged(rank, stage)


@pytest.mark.slow
def test_full_gradient_filter_on_two_ranks():
    run_on_ranks(_checks)


# ---------------------------------------------------------------- config

def _load(stub_data_dir, *overrides):
    from pipeline.config import load_config
    return load_config(ROOT / "configs" / "tiny_cpu.yaml",
                       [f"data.sources=[{{path: '{stub_data_dir}', weight: 1}}]", *overrides])


def test_full_gradient_config(stub_data_dir):
    from pipeline.errors import UserError
    for enabled in ("true", "false"):
        _load(stub_data_dir, "lai.filter.kind=full_gradient", f"lai.enabled={enabled}",
              "train.zero_stage=2").validate(world=2)
    with pytest.raises(UserError) as e:
        _load(stub_data_dir, "lai.filter.kind=full_gradient", "train.zero_stage=3").validate(world=2)
    msg = str(e.value)
    assert msg.startswith("lai.filter.kind: ") and "\n" not in msg, msg
    assert "zero_stage=3" in msg and "small-model evaluation reference" in msg

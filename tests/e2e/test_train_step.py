"""The LAI step's math on 2 real ranks (gloo) with real DeepSpeed engines, against brute-force
single-process autograd:

- masked loss == training on exactly the kept sequences (gradients), uneven kept sequences and
  uneven valid tokens across ranks, ZeRO 0 / 2 / 3, also with DeepSpeed's communication settings
  (overlap, small buckets) changed;
- grad_accum 2 == the documented formula (mean over micro-steps of each one's kept-token mean);
- all-kept masked loss == the plain token-mean loss;
- ZeRO-3 LAI values == ZeRO-0 LAI values on the same batch (global and val reference);
- the loss and random baseline filters;
- a non-finite loss on one rank skips the update on every rank (weights unchanged).
"""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.comm import Comm
from support.engine import (B, T, V, WORLD, engine_and_optimizer, run_on_ranks, seeded_model,
                            tiny_cfg)
import torch.nn.functional as F
from pipeline.lai import FilterSettings, ScoreSettings


def _batch(rank: int, micro: int):
    """Deterministic (input_ids, targets) of `rank`'s micro-step `micro`; some targets -100 so
    sequences have different numbers of valid tokens."""
    g = torch.Generator().manual_seed(1000 * micro + rank)
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    for j in range(B):
        targets[j, : (3 * j + 2 * rank + micro) % T] = -100
    return ids, targets


# keep masks per (micro, rank): uneven kept counts across ranks
KEEP = {0: [[True, False, False], [True, True, False]],
        1: [[False, True, True], [False, False, True]]}


def _reference_grads(model, micro_steps):
    """Brute force: mean over micro-steps of grad(sum of ce over kept tokens of all ranks / K)."""
    model = copy.deepcopy(model)
    model.zero_grad()
    for m in micro_steps:
        ids = torch.cat([_batch(r, m)[0] for r in range(WORLD)])
        tgt = torch.cat([_batch(r, m)[1] for r in range(WORLD)])
        keep = torch.tensor(sum(KEEP[m], []))
        logits = model(input_ids=ids[keep]).logits
        ce = F.cross_entropy(logits.transpose(1, 2), tgt[keep], ignore_index=-100,
                             reduction="sum")
        (ce / (tgt[keep] != -100).sum() / len(micro_steps)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _full_grads(engine):
    from deepspeed.utils import safe_get_full_grad
    return {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}


def _masked_backward(engine, rank, micro):
    from pipeline.lai import per_sequence_loss
    from pipeline.train.step import masked_loss
    ids, tgt = _batch(rank, micro)
    losses = per_sequence_loss(engine(input_ids=ids).logits, tgt)
    loss, stats = masked_loss(losses, (tgt != -100).sum(1), torch.tensor(KEEP[micro][rank]),
                              Comm.resolve())
    engine.backward(loss)
    return loss, stats


def _check_masked_equals_kept_only(rank, stage, grad_accum, **comm):
    """`comm`: DeepSpeed's ZeRO communication settings (train.overlap_comm, ...), which the
    engine must hold and which must not change the gradients."""
    cfg = tiny_cfg(stage, "gpt2", grad_accum)
    for key, value in comm.items():
        setattr(cfg.train, key, value)
    model = seeded_model(cfg)
    ref = _reference_grads(model, list(range(grad_accum)))
    engine, _ = engine_and_optimizer(cfg, model)
    if comm:
        assert engine.zero_overlap_comm() == comm["overlap_comm"]
        assert engine.zero_reduce_bucket_size() == comm["reduce_bucket_size"]
    for micro in range(grad_accum):
        _masked_backward(engine, rank, micro)
        if micro < grad_accum - 1:
            engine.step()
    got = _full_grads(engine)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=2e-5, atol=1e-7,
                                   msg=f"ZeRO {stage} accum {grad_accum}: grad of {name}")
    engine.destroy()


def _check_all_kept_is_plain_mean(rank):
    from pipeline.lai import per_sequence_loss
    from pipeline.train.step import masked_loss
    cfg = tiny_cfg(0, "gpt2")
    model = seeded_model(cfg)
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(rank))
    logits = model(input_ids=ids).logits
    tgt = torch.roll(ids, -1, 1)          # every target valid: equal tokens on every rank
    loss, stats = masked_loss(per_sequence_loss(logits, tgt), torch.full((B,), T),
                              torch.ones(B, dtype=torch.bool), Comm.resolve())
    plain = F.cross_entropy(logits.transpose(1, 2), tgt)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)
    assert stats.kept_tokens == stats.tokens == WORLD * B * T


def _lai_values(rank, stage, reference):
    from pipeline.lai import LAISettings, Selector, per_sequence_loss
    cfg = tiny_cfg(stage, "gpt2")
    engine, _ = engine_and_optimizer(cfg, seeded_model(cfg))
    sel = Selector(LAISettings(enabled=True, filter=FilterSettings(kind="lai"),
                               score=ScoreSettings(reference=reference)).resolved(has_val=True), seed=0,
                   val_batches=lambda: [_batch(rank, 5), _batch(rank, 6)])
    sel.refresh(1, engine.module)                         # reference=val: the cache is made
    ids, tgt = _batch(rank, 0)
    with sel.capture(engine.module) as cap:
        logits = engine(input_ids=ids).logits
    values, keep, _ = sel.select(1, cap, logits, tgt, per_sequence_loss(logits, tgt),
                              torch.arange(B) + rank * B)
    engine.destroy()
    return values


def _check_baseline_filters(rank):
    """loss: the baseline_rate highest losses of the global micro-batch go; random: a per-seq_id
    coin, the same whichever rank holds the sequence; both identical on every rank."""
    import numpy as np

    from pipeline.lai import LAISettings, Selector
    losses = torch.tensor([[1.0, 5.0, 2.0], [3.0, 4.0, 0.5]])[rank]
    seq_ids = torch.arange(B) + rank * B
    sel = Selector(LAISettings(enabled=False, filter=FilterSettings(kind="loss",
                                                                    baseline_rate=0.34, max_exclude_frac=0.5)).resolved(), seed=0)
    values, keep, _ = sel.select(1, None, None, None, losses, seq_ids)
    assert keep.tolist() == [[True, False, True], [True, False, True]][rank]
    assert ((values <= 0) == ~keep).all()
    sel = Selector(LAISettings(enabled=False, filter=FilterSettings(kind="random",
                                                                    baseline_rate=0.5, max_exclude_frac=0.9)).resolved(), seed=3)
    values, keep, _ = sel.select(1, None, None, None, losses, seq_ids)
    coin = [np.random.default_rng([3, int(i)]).random() > 0.5 for i in seq_ids]
    assert keep.tolist() == coin
    sel = Selector(LAISettings(enabled=False, warmup_steps=2,
                               filter=FilterSettings(kind="random")).resolved(), seed=3)
    assert sel.select(2, None, None, None, losses, seq_ids)[1].all()   # first 2 steps: warmup


def _params(engine, stage):
    from deepspeed.utils import safe_get_full_fp32_param
    return {n: (p if stage == 0 else safe_get_full_fp32_param(p)).detach().clone()
            for n, p in engine.module.named_parameters()}


def _check_nonfinite_skips(rank, stage):
    cfg = tiny_cfg(stage, "gpt2")
    engine, opt = engine_and_optimizer(cfg, seeded_model(cfg))
    before = _params(engine, stage)
    loss, stats = _masked_backward(engine, rank, 0)
    assert not stats.nonfinite
    # rank 1's loss turns NaN *after* the backward, so its gradients stay finite: only the
    # all-reduced flag can make rank 0 skip too
    nan_loss = torch.tensor([float("nan") if rank == 1 else 1.0, 1.0, 1.0], requires_grad=True)
    from pipeline.train.step import masked_loss
    _, bad = masked_loss(nan_loss, torch.ones(3), torch.ones(3, dtype=torch.bool), Comm.resolve())
    assert bad.nonfinite                                  # on both ranks
    opt.gate.observe(bad.nonfinite)
    engine.step()
    assert opt.gate.close(engine)                        # skipped, on both ranks
    after = _params(engine, stage)
    for n in before:
        assert torch.equal(before[n], after[n]), f"ZeRO {stage}: {n} changed on a skipped step"
    _masked_backward(engine, rank, 0)                     # a good step updates again
    engine.step()
    assert not opt.gate.close(engine)
    after = _params(engine, stage)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    engine.destroy()


def _checks(rank: int):
    _check_all_kept_is_plain_mean(rank)
    for stage in (0, 2, 3):
        _check_masked_equals_kept_only(rank, stage, grad_accum=1)
    _check_masked_equals_kept_only(rank, 2, grad_accum=2)
    # gradients reduced during the backward, in buckets of 300 elements (a layer's weight
    # spans several), not copied into one buffer: the same gradients
    _check_masked_equals_kept_only(rank, 2, grad_accum=2, overlap_comm=True, reduce_bucket_size=300,
                                   contiguous_gradients=False, allgather_bucket_size=300)
    _check_masked_equals_kept_only(rank, 3, grad_accum=1, overlap_comm=False, reduce_bucket_size=300,
                                   prefetch_bucket_size=300)
    for reference in ("global", "val"):
        v0, v3 = _lai_values(rank, 0, reference), _lai_values(rank, 3, reference)
        assert v0.dtype == torch.float64 and v0.shape == (B,) and v0.abs().max() > 0
        torch.testing.assert_close(v3, v0, rtol=1e-5, atol=1e-12)
    _check_baseline_filters(rank)
    for stage in (0, 2):
        _check_nonfinite_skips(rank, stage)


@pytest.mark.slow
def test_lai_step_math_on_two_ranks():
    run_on_ranks(_checks)

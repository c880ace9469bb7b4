"""Adam's second moments as the trainer reads them (pipeline.train.moments) on 2 real gloo ranks
with real DeepSpeed engines:

- ZeRO 0 / 1 / 2 / 3 in fp32: the row and column sums of P = 1/(sqrt(v_hat)+eps) equal those of
  a single-process AdamW trained on the concatenated batches, and Adam-aware LAI values on the
  engine (Selector, global reference) equal the single-process values on the concatenated batch;
- ZeRO 2 in bf16: the sums equal those of DeepSpeed's own full gather of exp_avg_sq; ZeRO 0 in
  bf16 (DeepSpeed's unfused wrapper, whose initialising step leaves zero moments): those of the
  fp32 master copies' state;
- before the first optimizer step the reader finds no moments (None); right after a checkpoint
  load (ZeRO 2, before any step) it reads what was saved.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from support.engine import B, T, V, WORLD, engine_and_optimizer, run_on_ranks, seeded_model, tiny_cfg
from pipeline.lai import ScoreSettings

pytestmark = pytest.mark.slow
STEPS = 2


def _global_batch(step: int) -> torch.Tensor:
    return torch.randint(0, V, (WORLD * B, T + 1), generator=torch.Generator().manual_seed(step))


def _loss(model, x):
    logits = model(input_ids=x[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def _single_process(cfg):
    """The model and AdamW of one process trained on the concatenated batches."""
    from pipeline.comm import Comm
    from pipeline.train.optim import SkipGate, build_optimizer
    model = seeded_model(cfg)
    opt = build_optimizer(model, cfg.train, SkipGate(Comm.local(), torch.device("cpu")),
                          offload=False)
    for step in range(STEPS):
        opt.zero_grad()
        _loss(model, _global_batch(step)).backward()
        opt.step()
    return model, opt


def _scored(model):
    from pipeline.lai.kernels.precondition import scored_layers
    return [(name, m.weight) for name, m in scored_layers(model, "linear")]


def _check_stage(rank: int, stage: int, precision: str) -> None:
    from pipeline.comm import Comm
    from pipeline.lai import LAISettings, Selector, per_sequence_loss
    from pipeline.lai.kernels.precondition import (adam_hyper, bias_correction2, fragment_sums,
                                           inverse_root, optimizer_moments)
    from pipeline.train.moments import MomentReader
    cfg = tiny_cfg(stage, "llama")
    cfg.train.precision = precision
    engine, opt = engine_and_optimizer(cfg, seeded_model(cfg))
    read = MomentReader(engine, opt, Comm.resolve(), torch.device("cpu"))
    assert read(_scored(engine.module)) is None               # before the first step
    for step in range(STEPS):
        x = _global_batch(step)[rank * B:(rank + 1) * B]
        engine.backward(_loss(engine, x))
        engine.step()
    got = read(_scored(engine.module))
    if precision == "bf16":             # against the whole tensor, gathered by DeepSpeed
        bc2 = bias_correction2(adam_hyper(opt)[0], cfg.train.beta2)
        want = {name: fragment_sums(inverse_root(_full_state(engine, opt, w), bc2,
                                                 cfg.train.eps), 0, *w.shape)
                for name, w in _scored(engine.module)}
    else:
        ref_model, ref_opt = _single_process(cfg)
        want = optimizer_moments(ref_opt)(_scored(ref_model))
    assert got.keys() == want.keys() and len(got) == 2 * 7 + 1
    for name in want:
        for g, w in zip(got[name], want[name]):
            torch.testing.assert_close(g, w, rtol=1e-4 if precision == "fp32" else 1e-6, atol=0,
                                       msg=f"ZeRO {stage} {precision}: sums of P for {name}")
    if stage == 2:                      # a fresh engine loading a checkpoint reads the same
        ckpt = Path(os.environ["LAI_TEST_CKPT"])
        engine.save_checkpoint(str(ckpt), tag=precision)
        again, opt2 = engine_and_optimizer(cfg, seeded_model(cfg))
        again.load_checkpoint(str(ckpt), tag=precision)
        loaded = MomentReader(again, opt2, Comm.resolve(), torch.device("cpu"))(
            _scored(again.module))
        for name in got:
            for g, w in zip(loaded[name], got[name]):
                assert torch.equal(g, w), f"ZeRO 2 {precision}: {name} after a load"
        again.destroy()
    if precision == "fp32":             # Adam-aware values on 2 ranks == one process
        s = LAISettings(score=ScoreSettings(precondition="adam", method="exact", sketch_dim=None,
                                            reference="global")).resolved()
        sel = Selector(s, seed=0, comm=Comm.resolve(), moments=read)
        sel.refresh(STEPS + 1, engine.module)
        x = _global_batch(10)
        ids, tgt = x[rank * B:(rank + 1) * B, :-1], x[rank * B:(rank + 1) * B, 1:]
        with torch.no_grad(), sel.capture(engine.module) as cap:
            logits = engine(input_ids=ids).logits
        values = sel.select(STEPS + 1, cap, logits, tgt, per_sequence_loss(logits, tgt),
                            torch.arange(B) + rank * B).values
        single = _values_on(ref_model, ref_opt, x)[rank * B:(rank + 1) * B]
        err = ((values - single).abs().max() / single.abs().max()).item()
        assert err < 1e-4, (stage, values, single)     # fp32 models: ~1e-5 apart
    engine.destroy()


def _full_state(engine, opt, param) -> torch.Tensor:
    """exp_avg_sq of `param` in full: DeepSpeed's gather (ZeRO 1-3), or the state of its fp32
    master copy (ZeRO 0 in bf16)."""
    from deepspeed.utils import safe_get_full_optimizer_state
    full = safe_get_full_optimizer_state(param, "exp_avg_sq")
    if full is not None:
        return full
    ds = engine.optimizer
    master = next(hp for lg, hg in zip(ds.fp16_groups, ds.fp32_groups)
                  for lp, hp in zip(lg, hg) if lp is param)
    return opt.state[master]["exp_avg_sq"]


def _values_on(model, opt, x):
    """Single-process Adam-aware values of input_ids x[:, :-1] with targets x[:, 1:]."""
    from pipeline.lai import AdamFactors, LAIScorer, LayerInputCapture
    scorer = LAIScorer(ScoreSettings(method="exact", reference="local",
                                     precondition="adam").resolved())
    scorer.factors = AdamFactors.from_optimizer(model, opt)
    with torch.no_grad(), LayerInputCapture(model) as cap:
        logits = model(input_ids=x[:, :-1]).logits
    return scorer.values(cap.inputs, logits, x[:, 1:], weights=scorer.input_weights(cap))


def _checks(rank: int) -> None:
    for stage in (0, 1, 2, 3):
        _check_stage(rank, stage, "fp32")
    for stage in (0, 2):
        _check_stage(rank, stage, "bf16")


def test_moments_under_zero_equal_single_process_adamw(tmp_path, monkeypatch):
    monkeypatch.setenv("LAI_TEST_CKPT", str(tmp_path))      # the ranks' checkpoint directory
    run_on_ranks(_checks)

"""Resuming on another number of ranks.

- Through the trainer (ZeRO 3, 2 ranks -> 1 -> 2, global batch 8): the ZeRO partitions are
  converted to DeepSpeed's universal checkpoint, the same global batch is sliced anew, and every
  step trains the same sequences with the same keep decisions and losses as an uninterrupted run
  (one rank, micro batch 8: the same global micro-batches; equal to the 2-rank run up to float
  summation order, ~1e-6); the ledger holds each sequence once; lai-export of the last ZeRO-3
  checkpoint equals the run's final model.
- ZeRO 0-3 on the engine alone (cheaper): a 2-rank checkpoint loaded on 1 rank holds the same
  weights, and the next step on the whole global batch lands where the 2-rank run's did (also
  for the no-decay param group: DeepSpeed's ZeRO-3 universal loader needs our repairs).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from support.train import (assert_export_equals_final, assert_two_one_two_equals_straight,
                           train)

pytestmark = pytest.mark.slow

ELASTIC = ["train.zero_stage=3", "train.global_batch=8", "train.micro_batch=8",
           "train.schedule=constant", "train.eval_every=0", "run.save_every=2"]


def test_zero3_resume_two_ranks_then_one_then_two(animals_data, tmp_path):
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    train(animals_data, straight, *ELASTIC, ranks=1)
    train(animals_data, elastic, *ELASTIC, "train.steps=4")
    out = train(animals_data, elastic, *ELASTIC, "train.steps=6", ranks=1)
    note = next(line for line in out.splitlines() if "resumed from" in line)
    assert "step_00000004 at step 4" in note and "world: 2 -> 1" in note, note
    assert "train.micro_batch: 4 -> 8" in note and "converted to a universal checkpoint" in note
    assert "global batch 8 = 8x1x1" in out
    assert (elastic / "checkpoints" / "step_00000004" / "universal" / "zero").is_dir()
    out = train(animals_data, elastic, *ELASTIC)
    note = next(line for line in out.splitlines() if "resumed from" in line)
    assert "at step 6" in note and "world: 1 -> 2" in note, note

    assert_two_one_two_equals_straight(straight, elastic)
    assert_export_equals_final(elastic, tmp_path / "exp")


# ---------------------------------------------------------------- engine level, ZeRO 0-3

STAGES = (0, 1, 2, 3)


def _save_on_two_ranks(rank: int) -> None:
    """Per stage: 2 steps, a checkpoint (TrainState with a rank-0-shared member), then a third
    step whose loss and parameters rank 0 records as the expected continuation."""
    import support.engine as es
    from pipeline.train.checkpointing import checkpoint
    from pipeline.train.checkpointing.state import Counters, TrainState
    ids = _global_batch()
    for stage in STAGES:
        cfg = es.tiny_cfg(stage, "llama")
        engine, _ = es.engine_and_optimizer(cfg, es.seeded_model(cfg))
        mine = ids.view(es.WORLD, es.B, es.T)[rank]
        for _ in range(2):
            _step(engine, mine)
        state = TrainState(engine, rank)
        state.register("counters", Counters(step=2))
        checkpoint.save(state, _dir(stage), 2, meta={"world": es.WORLD}, keep=1)
        loss = _step(engine, mine)
        losses = [torch.zeros(()) for _ in range(es.WORLD)]
        torch.distributed.all_gather(losses, torch.tensor(loss))
        params = _full_params(engine, stage)
        if rank == 0:
            torch.save({"loss": float(torch.stack(losses).mean()), "params": params},
                       _dir(stage) / "expected.pt")
        engine.destroy()


def _load_on_one_rank(rank: int) -> None:
    import deepspeed

    import support.engine as es
    from pipeline.comm import Comm
    from pipeline.train.checkpointing import checkpoint, universal
    from pipeline.train.optim import SkipGate, build_optimizer
    from pipeline.train.setup import ds_config
    from pipeline.train.checkpointing.state import Counters, TrainState
    ids = _global_batch()
    for stage in STAGES:
        cfg = es.tiny_cfg(stage, "llama")
        cfg.train.micro_batch = es.B * es.WORLD            # the same global batch on one rank
        ckpt = checkpoint.latest(_dir(stage))
        conv = stage >= 1
        if conv:
            assert "converted to a universal checkpoint" in universal.ensure(ckpt, 0)
        model = es.seeded_model(cfg)
        opt = build_optimizer(model, cfg.train, SkipGate(Comm.resolve(), torch.device("cpu")),
                              offload=False)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                          config=ds_config(cfg, 1, False, load_universal=conv))
        counters = Counters()
        state = TrainState(engine, 0)
        state.register("counters", counters)
        checkpoint.load(state, ckpt, same_world=False, universal=conv)
        assert counters.step == 2
        loss = _step(engine, ids)
        expected = torch.load(_dir(stage) / "expected.pt")
        assert loss == pytest.approx(expected["loss"], abs=1e-5), stage
        for name, p in _full_params(engine, stage).items():
            torch.testing.assert_close(p, expected["params"][name], rtol=0, atol=1e-5,
                                       msg=lambda m: f"ZeRO {stage} {name}: {m}")
        engine.destroy()


def _dir(stage: int) -> Path:
    return Path(os.environ["LAI_TEST_ELASTIC_DIR"]) / f"zero{stage}"


def _global_batch() -> torch.Tensor:
    import support.engine as es
    return torch.randint(0, es.V, (es.WORLD * es.B, es.T), generator=torch.Generator().manual_seed(1))


def _step(engine, ids: torch.Tensor) -> float:
    out = engine(input_ids=ids, labels=ids)
    engine.backward(out.loss)
    engine.step()
    return float(out.loss)


def _full_params(engine, stage: int) -> dict[str, torch.Tensor]:
    """fp32 master weights (ZeRO 1-3: gathered from the partitions; ZeRO 0: the parameters)."""
    from deepspeed.utils import safe_get_full_fp32_param
    return {n: (p if stage == 0 else safe_get_full_fp32_param(p)).detach().clone()
            for n, p in engine.module.named_parameters()}


def test_zero0_to_3_checkpoint_of_two_ranks_continues_on_one(tmp_path, monkeypatch):
    import support.engine as es
    monkeypatch.setenv("LAI_TEST_ELASTIC_DIR", str(tmp_path))
    es.run_on_ranks(_save_on_two_ranks)
    es.run_on_ranks(_load_on_one_rank, world=1)

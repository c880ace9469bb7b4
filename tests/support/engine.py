"""Shared helpers for the 2-rank DeepSpeed step tests (no tests here): a tiny config, a seeded
model, a real engine with the trainer's client optimizer, and a free rendezvous port."""
from __future__ import annotations


import torch

from pipeline.comm import free_port

WORLD, B, T, V = 2, 3, 16, 128      # ranks, sequences per rank, tokens per sequence, vocab


def tiny_cfg(stage: int, family: str, grad_accum: int = 1):
    """A Config for a 2-layer, hidden-32 `family` model, micro-batch B, no clipping."""
    from pipeline.config import Config
    cfg = Config()
    cfg.train.zero_stage, cfg.train.grad_accum, cfg.train.micro_batch = stage, grad_accum, B
    cfg.train.grad_clip = 0.0
    cfg.model.family, cfg.model.n_layer, cfg.model.hidden, cfg.model.n_head = family, 2, 32, 2
    return cfg


def seeded_model(cfg):
    from pipeline.train.model import build_model
    torch.manual_seed(0)
    return build_model(cfg.model, vocab_size=V, seq_len=T)


def engine_and_optimizer(cfg, model):
    """deepspeed.initialize with the trainer's client AdamW (call inside a WORLD-rank group)."""
    import deepspeed

    from pipeline.comm import Comm
    from pipeline.train.optim import SkipGate, build_optimizer
    from pipeline.train.setup import ds_config
    opt = build_optimizer(model, cfg.train, SkipGate(Comm.resolve(), torch.device("cpu")),
                          offload=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                      config=ds_config(cfg, WORLD, cuda=False))
    return engine, opt


def _rank_entry(rank: int, fn, port: int, world: int) -> None:
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pipeline.train import runtime
    runtime.init()
    try:
        fn(rank)
    except BaseException:
        runtime.shutdown(clean=False)  # no barrier: the peer may be inside another collective
        raise
    runtime.shutdown()


def run_on_ranks(fn, world: int = WORLD) -> None:
    """Run fn(rank) on `world` spawned processes in a real gloo group (fn: a module-level
    function)."""
    import torch.multiprocessing as mp
    mp.spawn(_rank_entry, args=(fn, free_port(), world), nprocs=world, join=True)

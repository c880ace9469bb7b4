"""A bare DeepSpeed training loop on a run config's model, data and batch: the reference the
pipeline's own overhead (LAI off) is measured against.

    python -m benchmarks.bare_loop CONFIG.yaml [PRESET.yaml ...] [key=value ...] --steps 20
    torchrun --nproc_per_node 2 -m benchmarks.bare_loop CONFIG.yaml ... --steps 20

Each step: this rank's slice of the global batch (the trainer's loader), engine forward,
token-mean cross-entropy over the [B*T, V] logits, engine.backward, engine.step; nothing else (no
LAI, no timers, no ledger, no logging). The same client optimizer and DeepSpeed JSON as the trainer.
Rank 0 prints one JSON line: seconds per step (wall clock over --steps after --warmup steps),
tokens/s of all ranks, model TFLOP/s per device and peak memory.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1)
    args = p.parse_args(argv)

    import deepspeed
    import torch
    import torch.nn.functional as F

    from pipeline.comm import Comm
    from pipeline.config import load_config
    from pipeline.data import PackedDataset, RankLoader
    from pipeline.train import runtime
    from pipeline.train.flops import model_flops_per_token
    from pipeline.train.model import build_model
    from pipeline.train.optim import SkipGate, build_optimizer
    from pipeline.train.setup import ds_config
    presets = [a for a in args.overrides if "=" not in a]
    cfg = load_config([args.config, *presets], [a for a in args.overrides if "=" in a])
    info = runtime.init(args.local_rank)
    cfg.validate(world=info.world)                  # fills the batch triple for this world
    comm = Comm.resolve()
    data = PackedDataset([(s.path, s.weight) for s in cfg.data.sources], cfg.data.seq_len,
                         split="train", seed=cfg.run.seed)
    loader = RankLoader(data, cfg.train.micro_batch, info.rank, info.world)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, vocab_size=data.vocab_size, seq_len=cfg.data.seq_len)
    opt = build_optimizer(model, cfg.train, SkipGate(comm, info.device), offload=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                      config=ds_config(cfg, info.world, info.device.type == "cuda"))
    cuda = info.device.type == "cuda"
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            comm.barrier()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = loader.next_batch()
        x = b["input_ids"].to(info.device, non_blocking=True)
        y = b["targets"].to(info.device, non_blocking=True)
        logits = engine(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        engine.backward(loss)
        engine.step()
    if cuda:
        torch.cuda.synchronize()
    comm.barrier()
    seconds = (time.perf_counter() - t0) / args.steps
    tps = cfg.train.micro_batch * info.world * cfg.data.seq_len / seconds
    if info.main:
        print(json.dumps({
            "mode": "bare", "batch": cfg.train.micro_batch, "world": info.world,
            "steps": args.steps, "step_s": seconds, "wall_tokens_per_s": tps,
            "tflops": tps * model_flops_per_token(engine.module, cfg.data.seq_len) / 1e12
            / info.world,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "final_loss": loss.item()}), flush=True)
    runtime.shutdown(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A bare DeepSpeed training loop on a run config's model, data and batch: the reference the
pipeline's own overhead (LAI off) is measured against.

    python -m benchmarks.bare_loop CONFIG.yaml [PRESET.yaml ...] [key=value ...] --steps 20
    torchrun --nproc_per_node 2 -m benchmarks.bare_loop CONFIG.yaml ... --steps 20

Each step: this rank's slice of the global batch (the trainer's loader), engine forward,
token-mean cross-entropy over the [B*T, V] logits, engine.backward, engine.step; nothing else (no
LAI, no timers, no ledger, no logging). The same client optimizer and DeepSpeed JSON as the trainer.
Rank 0 prints one JSON line: seconds per step (wall clock over --steps after --warmup steps),
tokens/s of all ranks, model TFLOP/s per device and peak memory. benchmarks.ref_loop is the same
measurement without DeepSpeed (the nanoGPT-class ceiling).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Setup:
    args: argparse.Namespace
    cfg: Any                      # pipeline.config.Config, batch triple filled for this world
    info: Any                     # runtime.DistInfo
    comm: Any
    loader: Any                   # this rank's RankLoader (pinned batches on CUDA)
    model: Any                    # build_model of the config, seeded with run.seed


def setup(doc: str, argv=None, extra: Callable | None = None) -> Setup:
    """Parse CONFIG [overrides] --steps --warmup (+ `extra(parser)`), start the process group,
    open the data and build the model, exactly as the trainer does."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1)
    if extra:
        extra(p)
    args = p.parse_args(argv)
    import torch

    from pipeline.comm import Comm
    from pipeline.config import load_config
    from pipeline.data import PackedDataset, RankLoader
    from pipeline.train import runtime
    from pipeline.train.model import build_model
    presets = [a for a in args.overrides if "=" not in a]
    cfg = load_config([args.config, *presets], [a for a in args.overrides if "=" in a])
    info = runtime.init(args.local_rank)
    cfg.validate(world=info.world)                  # fills the batch triple for this world
    data = PackedDataset([(s.path, s.weight) for s in cfg.data.sources], cfg.data.seq_len,
                         split="train", seed=cfg.run.seed)
    loader = RankLoader(data, cfg.train.micro_batch, info.rank, info.world,
                        pin_memory=info.device.type == "cuda")
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, vocab_size=data.vocab_size, seq_len=cfg.data.seq_len)
    return Setup(args, cfg, info, Comm.resolve(), loader, model)


def measure(s: Setup, step: Callable[[Any, Any], Any], mode: str, **extra) -> dict:
    """Run `step(x, y)` (returns the loss) --warmup + --steps times on the loader's batches; the
    JSON row of the timed steps (printed by rank 0)."""
    import torch

    from pipeline.train.flops import model_flops_per_token
    a, info, cfg = s.args, s.info, s.cfg
    cuda = info.device.type == "cuda"
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            s.comm.barrier()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = s.loader.next_batch()
        loss = step(b["input_ids"].to(info.device, non_blocking=True),
                    b["targets"].to(info.device, non_blocking=True))
    if cuda:
        torch.cuda.synchronize()
    s.comm.barrier()
    seconds = (time.perf_counter() - t0) / a.steps
    tps = cfg.train.micro_batch * info.world * cfg.data.seq_len / seconds
    model = getattr(s.model, "module", s.model)
    row = {"mode": mode, "batch": cfg.train.micro_batch, "world": info.world, "steps": a.steps,
           "step_s": seconds, "wall_tokens_per_s": tps,
           "tflops": tps * model_flops_per_token(model, cfg.data.seq_len) / 1e12 / info.world,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
           "final_loss": float(loss), **extra}
    if info.main:
        print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    s = setup(__doc__, argv)
    import deepspeed
    import torch.nn.functional as F

    from pipeline.train import runtime
    from pipeline.train.optim import SkipGate, build_optimizer
    from pipeline.train.setup import ds_config
    opt = build_optimizer(s.model, s.cfg.train, SkipGate(s.comm, s.info.device), offload=False)
    engine, *_ = deepspeed.initialize(
        model=s.model, optimizer=opt,
        config=ds_config(s.cfg, s.info.world, s.info.device.type == "cuda"))

    def step(x, y):
        logits = engine(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        engine.backward(loss)
        engine.step()
        return loss.detach()
    measure(s, step, "bare")
    runtime.shutdown(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())

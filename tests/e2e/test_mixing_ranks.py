"""Source mixing over 2 gloo ranks: both mixers (lai.mixing.kind=value, loss_bandit) end with the state
of one process fed the concatenated batches, bit for bit, also after resuming that state in one
process (the mixers' math: unit/test_mixing.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.comm import free_port
from pipeline.lai import SourceMixer
from pipeline.lai import MixingSettings

SPLIT = [5, 3]      # unequal local batches


def feed(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(step)
    src = rng.integers(0, 3, size=sum(SPLIT))
    v = rng.normal(size=sum(SPLIT)) + 0.5 * src
    v[0] = float("nan")
    return torch.from_numpy(src), torch.from_numpy(v), torch.from_numpy(rng.random(sum(SPLIT)))


def make_mixer(mixer: str) -> SourceMixer:
    return SourceMixer([1.0, 1.0, 2.0], MixingSettings(kind=mixer, eta=0.4, ema=0.7, floor=0.15,
                                                       every=2, average=True), warmup_steps=1)


def mixer_run(mixer: str, rank: int = 0, world: int = 1, steps=range(1, 10), mx=None,
              save_at: int = 0, out_dir: str = "") -> SourceMixer:
    """Feed `steps` to `mx` (a new mixer by default), this rank's slice of each global batch."""
    mx = mx or make_mixer(mixer)
    lo = sum(SPLIT[:rank]) if world > 1 else 0
    hi = lo + SPLIT[rank] if world > 1 else sum(SPLIT)
    for step in steps:
        src, v, loss = feed(step)
        mx.observe(step, src[lo:hi], v[lo:hi], loss[lo:hi])
        mx.end_step(step)
        if step == save_at:
            torch.save(mx.state_dict(), os.path.join(out_dir, f"{mixer}-rank{rank}-step{step}.pt"))
    return mx


def rank_worker(rank, port, out_dir):
    import torch.distributed as dist
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for mixer in ("value", "loss_bandit"):
            mx = mixer_run(mixer, rank, 2, save_at=5, out_dir=out_dir)
            torch.save(mx.state_dict(), os.path.join(out_dir, f"{mixer}-rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_also_resumed_on_one(tmp_path):
    """Both mixers: 2 gloo ranks (unequal local batches) end with the state of one process fed
    the concatenated batches, bit for bit; the 2-rank state saved at step 5 (mid-window: every 2
    after warmup 1), resumed in one process, continues to the same state (elastic resume)."""
    import torch.multiprocessing as mp
    mp.spawn(rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for mixer in ("value", "loss_bandit"):
        one = mixer_run(mixer).state_dict()
        for r in range(2):
            assert torch.load(tmp_path / f"{mixer}-rank{r}.pt", weights_only=False) == one
        resumed = make_mixer(mixer)
        saved = torch.load(tmp_path / f"{mixer}-rank0-step5.pt", weights_only=False)
        resumed.load_state_dict(saved)
        assert mixer_run(mixer, steps=range(6, 10), mx=resumed).state_dict() == one
        assert len(one["history"]) == 1 + 4 and one["sequences"] == [sum(
            (feed(s)[0] == i).sum().item() for s in range(1, 10)) for i in range(3)]

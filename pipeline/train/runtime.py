"""The process group and this rank's device (data parallel only: one group, all ranks).

Works under `deepspeed --num_gpus N`, `torchrun --nproc_per_node N`, srun (via the launchers) and
as a single process without any launcher (world 1). NCCL on CUDA, gloo on CPU. Collectives go
through pipeline.comm; this module only starts and ends the group, and times the device.
"""
from __future__ import annotations

import os
import random
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.comm import free_port


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def skip_cpu_shm_op() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (~30 s, and a wait
    without end on the build lock a killed compile leaves behind) that only its inference
    all-reduce uses; training talks gloo, so mark the op unavailable. Call before DeepSpeed
    initialises its comm backend (deepspeed.init_distributed, zero.Init)."""
    import deepspeed
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def init(local_rank: int | None = None, *, through_deepspeed: bool = True) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed, or torch alone (`through_deepspeed`
    False: train.backend=fsdp2), a no-op if already initialised, and pick this rank's device.
    `local_rank`: from `--local_rank` (deepspeed launcher) or LOCAL_RANK."""
    if local_rank is None or local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    if "RANK" not in os.environ:              # plain `python -m pipeline.train`: world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(local_rank),
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    if not through_deepspeed:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo",
                                    device_id=torch.device("cuda", local_rank) if cuda else None)
    else:
        import deepspeed
        if not cuda:
            skip_cpu_shm_op()
        # DeepSpeed binds each rank's GPU to NCCL (device_id) where that is safe (world > 1)
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown(engine=None, *, clean: bool = True) -> None:
    """Destroy the engine (DeepSpeed needs it before the group goes) and the process group.
    clean (every rank gets here together): a barrier first, so that no rank tears its connections
    down while a peer still uses them. clean=False (an error on this rank): no collective, which
    could wait forever for peers that are elsewhere."""
    if engine is not None:
        engine.destroy()
    if dist.is_initialized():
        if clean and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


class PhaseClock:
    """Marks between the phases of a micro-step. On CUDA each mark is an event in the stream, so
    marking never waits for the device; `durations` reads them (waiting for the last one), which
    the loop does once per log window. Elsewhere: the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds between consecutive marks."""
        if not self.cuda:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]
        self.marks[-1].synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


_log_file: Path | None = None       # RUN/train.log on rank 0, once the run directory is known


def log_to(path: Path | None) -> None:
    """Append every later log0 line (and `log_line`) to `path` too."""
    global _log_file
    _log_file = path


def log_line(text: str) -> None:
    """`text` into the log file, if one is set (e.g. the error that ends a run)."""
    if _log_file is not None:
        with open(_log_file, "a") as f:
            f.write(text + "\n")


def log0(info: DistInfo, msg: str) -> None:
    """A timestamped progress line on rank 0's stdout, and in RUN/train.log."""
    if info.main:
        line = f"[lai-train {time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_line(line)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (a time limit, Slurm preemption, scancel --signal); read at step
    boundaries. launch/train.sh starts the deepspeed launcher with SIGTERM blocked, so that only
    the trainers act on it: unblocked here, once the handler is in place (a TERM that arrived
    while this rank started up is delivered now)."""

    STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signal: str | None = None
        for sig in self.STOP_SIGNALS:
            signal.signal(sig, self._handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.STOP_SIGNALS)

    def _handler(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

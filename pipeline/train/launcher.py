"""torchrun for train.backend=fsdp2 (launch/train.sh starts it), passing the trainers' exit code on.

    python -m pipeline.train.launcher [torchrun options] -m pipeline.train CONFIG.yaml ...

torchrun itself exits 1 whenever a rank exits non-zero; lai-train's 75 (stopped after a
checkpoint: re-run to resume) must reach the caller, which requeues on it (launch/
slurm_train.sbatch). So: every failed rank exited 75 -> 75; else the first failed rank's code.
torchrun's options, rendezvous and signal handling are its own.
"""
from __future__ import annotations

import sys

from pipeline.train.trainer import EXIT_STOPPED


def main() -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun
    try:
        torchrun()
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]   # those seen first
        return EXIT_STOPPED if set(codes) == {EXIT_STOPPED} else (codes[0] or 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

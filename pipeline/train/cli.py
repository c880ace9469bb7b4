"""lai-train: DeepSpeed ZeRO pretraining that values every sequence (LAI) and drops the harmful ones
before the optimizer step.

    python -m pipeline.train CONFIG.yaml [PRESET.yaml ...] [dotted.key=value ...] [--local_rank N]
    deepspeed --num_gpus 2 --module pipeline.train configs/tiny_cpu.yaml train.steps=50
    torchrun --nproc_per_node 2 -m pipeline.train configs/tiny_cpu.yaml [train.backend=fsdp2 ...]
    lai-train --dry-run [--world N] CONFIG.yaml ...     check and print the plan, start nothing

Before anything starts: the config is loaded and validated and the resume point checked (each a
one-line error, exit 2); a resume on another number of ranks converts ZeRO partitions to a
universal checkpoint (pipeline.train.checkpointing.universal); then the process group starts and the Trainer
runs. --dry-run / --check stop after the checks (pipeline.train.dryrun).
Exit codes: 0 finished (RUN/final written), 2 user error, 75 stopped by SIGTERM/SIGUSR1 or
run.time_limit_s after saving a checkpoint (re-run the same command to resume).
"""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import load_config
from pipeline.errors import UserError, cli_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lai-train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*",
                   help="more YAML files merged in order (e.g. configs/zero/stage3.yaml), then "
                        "dotted.key=value overrides, e.g. train.steps=20")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by the deepspeed launcher")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and the data, print the resolved config, the "
                        "DeepSpeed JSON, parameters, tokens per step, epochs and a memory "
                        "estimate; start nothing")
    p.add_argument("--check", action="store_true",
                   help="the checks of --dry-run only, silent on success (launch/train.sh runs "
                        "it before starting ranks)")
    p.add_argument("--print-backend", action="store_true",
                   help="with --check: print train.backend once the checks pass (launch/train.sh "
                        "picks the launcher by it: deepspeed, or torchrun for fsdp2)")
    p.add_argument("--world", type=int, default=None, metavar="N",
                   help="ranks the run will have (default: $WORLD_SIZE, else 1)")
    return p.parse_args(argv)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    presets = [a for a in args.overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    overrides = [a for a in args.overrides if a not in presets]
    cfg = load_config([args.config, *presets], overrides)
    world = args.world if args.world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise UserError(f"--world: must be >= 1, got {world}")
    cfg.validate(world=world)                             # fail before any start-up
    if args.dry_run or args.check:
        from pipeline.train.dryrun import dry_run
        rc = dry_run(cfg, world, quiet=args.check)
        if args.print_backend and rc == 0:
            print(cfg.train.backend)
        return rc
    from pipeline.train import quiet, runtime
    from pipeline.train.checkpointing import lineage, resume, universal
    quiet.silence_known_noise()
    from pipeline.train.trainer import Trainer
    point = resume.plan(cfg, world)
    origin = lineage.plan(cfg, world) if point is None else None     # run.continue_from
    for start in (point, origin):
        if start is not None and start.universal:    # before the group: no collective timeout
            start.conversion = universal.ensure(start.path, int(os.environ.get("RANK", "0")))
    info = runtime.init(args.local_rank, through_deepspeed=cfg.train.backend == "deepspeed")
    try:
        return Trainer(cfg, info, point, origin).run()
    except UserError as e:
        runtime.log_line(f"error: {e}")                  # into RUN/train.log too
        raise
    finally:
        runtime.shutdown(clean=False)     # a no-op after the run's own clean shutdown


if __name__ == "__main__":
    sys.exit(main())

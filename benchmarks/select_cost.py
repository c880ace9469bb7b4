"""What lai.select.kind=oversample and lai.weighting cost per optimizer step, as ratios to LAI scoring
without them (lai.filter.kind=none), measured side by side in one process on the same machine.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.select_cost [--rounds 20]

One real Trainer per variant (DeepSpeed ZeRO 0, one rank, gloo on CPU; a tiny Llama 2 x 64 on
the stdlib corpus: real data prep, vocab 512, seq 128, global batch 8 = micro 4 x accumulation
2, the default sketch, global reference), all in this process. Each round runs one optimizer
step (`Trainer.train_step`: the pool's scoring forward, the micro-steps, the update, the ledger)
of every variant in turn; step time = the best of the rounds (the machine is shared, and round-
robin lets other load hit every variant alike). The trained tokens per step are the same in
every variant. Prints one line per variant with its ratio to `none`, the machine named.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from benchmarks.lib.corpus import prepare_default_corpus
from benchmarks.lib.machine import machine
from benchmarks.lib.paths import OUT
from benchmarks.lib.timing import time_interleaved

VARIANTS = {"none": [],
            "select x1.5": ["lai.select.kind=oversample", "lai.select.factor=1.5"],
            "select x2": ["lai.select.kind=oversample", "lai.select.factor=2"],
            "weighting": ["lai.weighting.kind=sigmoid"]}


def trainers(config: Path, out: Path) -> dict:
    """{variant: Trainer} in this process (a one-rank group)."""
    from pipeline.comm import free_port
    from pipeline.config import load_config
    from pipeline.train import quiet, runtime
    from pipeline.train.trainer import Trainer
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    quiet.silence_known_noise()
    info = runtime.init(0)
    return {name: Trainer(load_config([config], [f"run.out_dir={out / name.replace(' ', '_')}",
                                                 *ov]).validate(1), info, None)
            for name, ov in VARIANTS.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.select_cost",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", default=str(OUT / "select_cost"))
    args = p.parse_args(argv)
    out = Path(args.out)
    data = prepare_default_corpus(out / "data", 512)
    cfg = {"run": {"seed": 0, "resume": "never", "save_every": 0},
           "data": {"sources": [{"path": str(data), "weight": 1.0}], "seq_len": 128},
           "model": {"family": "llama", "n_layer": 2, "hidden": 64, "n_head": 2},
           "train": {"steps": 1000, "micro_batch": 4, "grad_accum": 2, "zero_stage": 0,
                     "eval_every": 0, "warmup_steps": 2},
           "lai": {"filter": "none", "reference": "global", "warmup_steps": 0},
           "log": {"every": 10 ** 6, "histogram_every": 0}}
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    runs = trainers(config, out / "runs")
    best = time_interleaved({k: t.train_step for k, t in runs.items()}, rounds=args.rounds,
                            warmup=2)
    for name, s in best.items():
        print(f"select_cost {name}: {s * 1e3:.1f} ms/step, {s / best['none']:.2f}x none "
              f"({machine()}, 1 rank, best of {args.rounds})", flush=True)
    from pipeline.train import runtime
    for t in runs.values():
        t.ledger.close()
        t.lock.release()
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

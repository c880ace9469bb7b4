"""lai-train --dry-run / --check and the launcher's check before it starts ranks (no training:
one process each, seconds):

- --dry-run validates config and data and prints the resolved config, the DeepSpeed JSON, the
  parameter count, tokens per step, epochs, a memory estimate and the warnings a run would print
  (here: repeated data, a tiny val split); it starts nothing and writes nothing;
- launch/train.sh checks before deepspeed spawns any rank: a typo is one error line (not one per
  rank plus a DeepSpeed [ERROR]); launch/train.sh --dry-run plans for the ranks it would start.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import make_data_dir, random_docs
from pipeline.comm import free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """200 short documents (repeated by a 200-step run) and a val split of 3 short ones."""
    out = tmp_path_factory.mktemp("small")
    return make_data_dir(out / "data", random_docs(200, 512, min_len=8, max_len=64),
                         val_docs=random_docs(3, 512, min_len=8, max_len=20, seed=1))


def overrides(data: Path, run: Path) -> list[str]:
    return [f"data.sources=[{{path: {data}, weight: 1.0}}]", "data.seq_len=32",
            f"run.out_dir={run}"]


def lai_train(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "pipeline.train", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_prints_the_plan_and_starts_nothing(small, tmp_path):
    run = tmp_path / "run"
    p = lai_train("--dry-run", "--world", 4, CONFIG, *overrides(small, run))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    yaml_part, rest = out.split("# DeepSpeed config (RUN/ds_config.json)\n")
    assert "grad_accum: 1" in yaml_part and "micro_batch: 4" in yaml_part   # 16 over 4 ranks
    ds = json.loads(rest[:rest.index("\n}\n") + 2])
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert "model: 0.92M parameters (LlamaConfig)" in out
    assert "batch: global 16 = micro 4 x accumulation 1 x 4 rank(s); 512 tokens per step" in out
    assert "this run: 200 steps x 16 sequences x 32 tokens = 102,400 tokens" in out
    assert "epochs of the mix" in out and "memory per device (estimate): model states" in out
    assert f"fresh start in {run}" in out and out.strip().endswith("dry run: nothing was started")
    assert "warning: this run repeats data" in out and "warning: the val split is tiny" in out
    assert not run.exists()

    p = lai_train("--check", "--world", 2, CONFIG, *overrides(small, run))
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
    p = lai_train("--check", "--world", 3, CONFIG, *overrides(small, run))
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: train.global_batch: 16 sequences do not split evenly over 3 ranks; use a "
        "multiple of 3, or a number of ranks that divides 16"]


def launch(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()),
           "CUDA_VISIBLE_DEVICES": ""}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return subprocess.run([str(ROOT / "launch" / "train.sh"), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_launcher_checks_before_starting_ranks(small, tmp_path):
    run = tmp_path / "run"
    p = launch(CONFIG, *overrides(small, run), "lai.pairng=pooled")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: command line: unknown key 'lai.pairng' (did you mean 'lai.pairing'"), lines
    assert "[lai-train" not in p.stdout and "[ERROR]" not in p.stdout + p.stderr
    p = launch("--dry-run", CONFIG, *overrides(small, run))
    assert p.returncode == 0, p.stderr
    assert "launch: 2 CPU rank(s)" in p.stdout and "x 2 rank(s)" in p.stdout
    assert "dry run: nothing was started" in p.stdout and not run.exists()

"""Metrics that need other processes: a W&B offline run (wandb's service process writes the
transaction log) holds the scalars, and the matmul parameter count of a model that ZeRO-3
partitioned (DeepSpeed in its own process). The rest of the metrics: unit/test_metrics.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.train.metrics import Metrics
from pipeline.train.sinks import WandbSink
from support import ROOT
from support.train import wait_for_wandb_history


@pytest.mark.slow
def test_wandb_offline_run_holds_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with Metrics(run_dir / "tb", 0, 1,
                 sinks=[WandbSink(run_dir, "lai-test", {"train": {"steps": 3}})]) as m:
        for step in range(1, 4):
            m.scalars(step, {"train/loss": 4.0 - step, "lai/excluded_frac": 0.125 * step})
    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wait_for_wandb_history(run_file, 3)
    assert [(r["_step"], r["train/loss"], r["lai/excluded_frac"]) for r in rows] == \
        [(s, 4.0 - s, 0.125 * s) for s in range(1, 4)]
    assert run_file.name == f"run-{(run_dir / 'wandb-id.txt').read_text().strip()}.wandb"


ZERO3_PARAMS = textwrap.dedent("""
    import sys
    import deepspeed, torch.distributed as dist
    from transformers import GPT2Config, GPT2LMHeadModel
    from pipeline.train.flops import matmul_params
    from pipeline.train.runtime import skip_cpu_shm_op
    skip_cpu_shm_op()
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    cfg = GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=1, eos_token_id=2)
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight.numel() == 0          # really partitioned
    print("matmul_params", matmul_params(model))
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_matmul_params_under_zero3(tmp_path):
    """ZeRO-3 empties each rank's parameter tensors; the count must still be the full model's."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               LOCAL_RANK="0")
    p = subprocess.run([sys.executable, "-c", ZERO3_PARAMS, str(tmp_path / "store")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines()[-1] == "matmul_params 27648"

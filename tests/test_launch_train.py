"""launch/train.sh end to end: a real 2-rank CPU DeepSpeed run through the script, then the same run
continued through the hostfile (no-SSH) path with a hostfile that lists localhost."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from datagen import make_data_dir, random_docs
from pipeline.comm import free_port

REPO = Path(__file__).resolve().parents[1]
TRAIN_SH = REPO / "launch" / "train.sh"


def tiny_overrides(data: Path, out: Path, steps: int) -> list[str]:
    """configs/tiny_cpu.yaml shrunk to well under a second per step on 2 CPU ranks."""
    return [f"data.sources=[{{path: {data}, weight: 1.0}}]", "data.seq_len=32",
            "model.n_layer=2", "model.hidden=64", "model.n_head=2", "train.micro_batch=2",
            "train.global_batch=0",
            f"train.steps={steps}", "train.warmup_steps=1", "train.eval_every=0",
            "lai.warmup_steps=0", "log.every=1", "log.histogram_every=0", "run.save_every=2",
            f"run.out_dir={out}"]


def launch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run launch/train.sh on CPU ranks (CUDA_VISIBLE_DEVICES="" hides any GPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()),
           "CUDA_VISIBLE_DEVICES": ""}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return subprocess.run([str(TRAIN_SH), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tb_steps(run: Path, tag: str = "train/loss") -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.slow
def test_train_sh_two_cpu_ranks_then_hostfile_resume(tmp_path):
    data = make_data_dir(tmp_path / "data", random_docs(200, 512, min_len=8, max_len=64))
    run = tmp_path / "run"
    config = REPO / "configs" / "tiny_cpu.yaml"

    # 1) single node: two CPU ranks detected by the script (no GPU here), 2 steps
    p = launch(config, *tiny_overrides(data, run, steps=2))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "launch: 2 CPU rank(s) (no GPU found), OMP_NUM_THREADS=1" in p.stdout
    assert json.loads((run / "ds_config.json").read_text())["train_batch_size"] == 2 * 2
    assert (run / "final").is_dir()
    assert sorted(tb_steps(run)) == [1, 2]
    assert (run / "checkpoints" / "step_00000002").is_dir()

    # 2) the hostfile path, no SSH: "localhost slots=2", node rank 0; resumes the run to step 4.
    #    (there is no sshd here: deepspeed's SSH path would fail its reachability check)
    hosts = tmp_path / "hostfile"
    hosts.write_text("# one node\nlocalhost slots=2\n")
    p = launch("--hostfile", hosts, "--node_rank", 0, config, *tiny_overrides(data, run, steps=4))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"launch: node 0 of 1 from {hosts}, 2 rank(s) here" in p.stdout
    assert sorted(tb_steps(run)) == [1, 2, 3, 4]
    assert (run / "checkpoints" / "step_00000004").is_dir()

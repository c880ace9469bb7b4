"""launch/train.sh end to end: a real 2-rank CPU DeepSpeed run through the script, stopped by
SIGTERM to its whole process group (what a time limit sends): the ranks save and exit 75 and the
launcher waits for them; then at once, on the same master port, the run continues through the
hostfile (no-SSH) path with a hostfile that lists localhost."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from support import ROOT
from support.datagen import make_data_dir, random_docs
from support.train import launch_env, tb_scalars
from pipeline.comm import free_port

TRAIN_SH = ROOT / "launch" / "train.sh"
STEPS = 30


def tiny_overrides(data: Path, out: Path, steps: int) -> list[str]:
    """configs/tiny_cpu.yaml shrunk to well under a second per step on 2 CPU ranks."""
    return [f"data.sources=[{{path: {data}, weight: 1.0}}]", "data.seq_len=32",
            "model.n_layer=2", "model.hidden=64", "model.n_head=2", "train.micro_batch=2",
            "train.global_batch=0",
            f"train.steps={steps}", "train.warmup_steps=1", "train.eval_every=0",
            "lai.warmup_steps=0", "log.every=1", "log.histogram_every=0", "run.save_every=0",
            f"run.out_dir={out}"]


def launch(*args, port: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run launch/train.sh to its end."""
    return subprocess.run([str(TRAIN_SH), *map(str, args)], cwd=ROOT, env=launch_env(port),
                          capture_output=True, text=True, timeout=timeout)


def group_members(pgid: int) -> list[int]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                members.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


@pytest.mark.slow
def test_train_sh_sigterm_to_the_group_saves_then_hostfile_resume(tmp_path):
    data = make_data_dir(tmp_path / "data", random_docs(200, 512, min_len=8, max_len=64))
    run = tmp_path / "run"
    config = ROOT / "configs" / "tiny_cpu.yaml"
    port = free_port()

    # 1) single node: two CPU ranks detected by the script (no GPU here), in a session of its own;
    #    at step 3, SIGTERM to the whole process group (launcher processes and ranks alike)
    proc = subprocess.Popen([str(TRAIN_SH), str(config), *tiny_overrides(data, run, STEPS)],
                            cwd=ROOT, env=launch_env(port), start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"step 3/{STEPS} " in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    seen += proc.stdout.readlines()
    rc = proc.wait(timeout=120)
    out = "".join(seen)
    assert rc == 75, out[-3000:]                        # the ranks' exit code, passed on
    assert "launch: 2 CPU rank(s) (no GPU found), OMP_NUM_THREADS=1" in out
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+);", out).group(1))
    assert 3 <= stopped < STEPS
    from pipeline.train.checkpointing import checkpoint
    assert checkpoint.latest(run) == run / "checkpoints" / f"step_{stopped:08d}"
    assert checkpoint.damage(checkpoint.latest(run)) is None
    assert not (run / "final").exists()
    assert group_members(proc.pid) == []                # the launcher returned after its ranks
    assert json.loads((run / "ds_config.json").read_text())["train_batch_size"] == 2 * 2

    # 2) at once, on the same master port: the hostfile path, no SSH ("localhost slots=2", node
    #    rank 0) resumes the run to its end. (No sshd here: deepspeed's SSH path would fail.)
    hosts = tmp_path / "hostfile"
    hosts.write_text("# one node\nlocalhost slots=2\n")
    p = launch("--hostfile", hosts, "--node_rank", 0, config, *tiny_overrides(data, run, STEPS),
               port=port)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"launch: node 0 of 1 from {hosts}, 2 rank(s) here" in p.stdout
    assert f"resumed from {run / 'checkpoints' / f'step_{stopped:08d}'} at step {stopped}" in p.stdout
    assert sorted(tb_scalars(run)) == list(range(1, STEPS + 1))
    assert (run / "final").is_dir() and (run / "checkpoints" / f"step_{STEPS:08d}").is_dir()


@pytest.mark.slow
def test_train_sh_max_restarts_resumes_after_a_crash_quietly(tmp_path):
    """Rank 0 dies after step 3 (pipeline.train.faults); --max-restarts=1, given after the config
    and the overrides, starts the ranks again from the step-2 checkpoint, and step 3 trains again
    to the same loss. The console carries none of the known-harmless noise, and every progress
    line has the elapsed time and an ETA."""
    data = make_data_dir(tmp_path / "data", random_docs(200, 512, min_len=8, max_len=64))
    run = tmp_path / "run"
    over = [*tiny_overrides(data, run, 4), "run.save_every=2"]
    p = subprocess.run([str(TRAIN_SH), ROOT / "configs" / "tiny_cpu.yaml", *over, "--max-restarts=1"],
                       cwd=ROOT, env={**launch_env(), "LAI_TEST_CRASH_AT_STEP": "3"},
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "LAI_TEST_CRASH_AT_STEP: rank 0 crashes after step 3" in out
    assert "launch: the ranks failed (exit 13); restart 1 of 1, resuming from the latest checkpoint" in out
    assert f"resumed from {run / 'checkpoints' / 'step_00000002'} at step 2" in out
    progress = [line for line in p.stdout.splitlines() if re.search(r"step \d/4 loss", line)]
    assert [line.split("] step ")[1][:3] for line in progress] == ["1/4", "2/4", "3/4", "3/4", "4/4"]
    loss = [line.split(" loss ")[1].split()[0] for line in progress]
    assert loss[2] == loss[3]                       # step 3 before the crash and after the restart
    assert all(re.search(r" elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d$", line) for line in progress)
    assert (run / "final").is_dir()
    for noise in ("Setting accelerator to CPU", "untested optimizer", "all_gather_into_tensor"):
        assert noise not in out, noise

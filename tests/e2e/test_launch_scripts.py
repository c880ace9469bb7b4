"""launch/ scripts without a training run: shellcheck, usage text, clear errors on bad input."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from support.slurm import SlurmError, apt_install

LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
# the environment of a shell outside any Slurm job
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def run(*args: str | Path, cwd: Path = ROOT, env: dict | None = None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**ENV, **(env or {})}, timeout=120)


def test_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"common.sh", "train.sh", "tensorboard.sh", "slurm_train.sbatch", "slurm_prep.sbatch",
            "slurm_prep.sh"} <= names


def shellcheck() -> str:
    """The shellcheck binary, installed with apt-get when missing and allowed (root); else skip."""
    if shutil.which("shellcheck") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            apt_install(["shellcheck"])
        except (SlurmError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"shellcheck not installed and apt-get could not install it: {e}")
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (as root: apt-get install -y shellcheck)")
    return "shellcheck"


def test_shellcheck_clean():
    p = run(shellcheck(), "-x", *[s.relative_to(ROOT) for s in SCRIPTS])
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name != "common.sh"],
                         ids=lambda s: s.name)
def test_strict_mode_and_usage(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    p = run("bash", script, "-h")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage:"), p.stdout


def test_train_sh_input_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {steps: 1}\n")
    train = LAUNCH / "train.sh"
    cases = [
        ((), "missing CONFIG.yaml"),
        ((tmp_path / "nope.yaml",), "config file"),
        (("--hostfile", tmp_path / "hosts", cfg), "hostfile"),
        (("--node_rank", "1", cfg), "--node_rank needs --hostfile"),
        (("--ranks", "two", cfg), "--ranks: 'two' is not a non-negative integer"),
        (("--ranks", "0", cfg), "--ranks: must be at least 1"),
        (("--frobnicate", cfg), "unknown option '--frobnicate'"),
        (("--slurm", cfg), "--slurm: not inside a Slurm step"),
        # options anywhere (after the config and overrides too), also as --opt=value
        ((cfg, "train.steps=2", "--ranks=two"), "--ranks: 'two' is not a non-negative integer"),
        ((cfg, "--max-restarts", "x"), "--max-restarts: 'x' is not a non-negative integer"),
        ((cfg, "--ranks"), "--ranks needs a value"),
        ((cfg, "--dry-run=1"), "--dry-run takes no value"),
        # torchrun's and deepspeed's habits name ours
        (("--nproc_per_node", "2", cfg), "here it is --ranks N"),
        ((cfg, "--num_gpus=2"), "here it is --ranks N"),
    ]
    for args, message in cases:
        p = run(train, *args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        last = p.stderr.splitlines()[-1]
        assert message in last and last.startswith("error: train.sh: "), (args, p.stderr)

    empty = tmp_path / "empty_hosts"
    empty.write_text("# no hosts yet\nnode1 slot=2\n")
    p = run(train, "--hostfile", empty, cfg)
    assert p.returncode == 2 and "has no 'HOST slots=N' line" in p.stderr
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n")
    p = run(train, "--hostfile", hosts, "--node_rank", "1", cfg)
    assert p.returncode == 2 and "lists only 1 node(s)" in p.stderr


def test_train_sh_refuses_a_busy_master_port(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {steps: 1}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run(LAUNCH / "train.sh", "--ranks", "1", "--master_port", port, cfg)
    assert p.returncode == 2
    assert f"master port {port} is in use" in p.stderr and "--master_port" in p.stderr


def test_slurm_scripts_refuse_to_run_outside_a_job(tmp_path):
    p = run("bash", LAUNCH / "slurm_train.sbatch", "cfg.yaml")
    assert p.returncode == 2 and "not inside a Slurm job" in p.stderr
    p = run("bash", LAUNCH / "slurm_prep.sbatch", "merge", "out")
    assert p.returncode == 2 and "not inside a Slurm job" in p.stderr
    # inside a job but submitted from elsewhere: names the missing checkout
    p = run("bash", LAUNCH / "slurm_train.sbatch", "cfg.yaml", cwd=tmp_path,
            env={"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(tmp_path)})
    assert p.returncode == 2 and "submit from the repository root or set LAI_ROOT" in p.stderr
    p = run("bash", LAUNCH / "slurm_train.sbatch", "nope.yaml",
            env={"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(ROOT)})
    assert p.returncode == 2 and "config file 'nope.yaml' not found" in p.stderr
    p = run("bash", LAUNCH / "slurm_train.sbatch", "--max-restarts", "two", "cfg.yaml",
            env={"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(ROOT)})
    assert p.returncode == 2 and "--max-restarts: 'two' is not a non-negative integer" in p.stderr
    p = run("bash", LAUNCH / "slurm_prep.sbatch", "part", "--out", "x",
            env={"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(ROOT)})
    assert p.returncode == 2 and "must run as an array job" in p.stderr


def test_slurm_prep_help_example_uses_real_lai_prep_options():
    usage = run(LAUNCH / "slurm_prep.sh", "-h").stdout
    example = next(line for line in usage.splitlines() if "launch/slurm_prep.sh --parts" in line)
    prep_options = example.split(" -- ", 1)[1].split()[::2]
    assert prep_options == ["--source", "--out"], example
    lai_prep_help = run(sys.executable, "-m", "data_prep", "--help",
                        env={"PYTHONPATH": str(ROOT)}).stdout
    assert all(f"{o} " in lai_prep_help for o in prep_options)
    assert "--input" not in usage and "--input" not in lai_prep_help


def test_slurm_prep_submitter_needs_out():
    p = run(LAUNCH / "slurm_prep.sh", "--parts", "2", "--", "--source", "stdlib")
    assert p.returncode == 2 and "need --out OUT" in p.stderr
    p = run(LAUNCH / "slurm_prep.sh", "--parts", "0", "--", "--out", "x")
    assert p.returncode == 2 and "--parts: '0' is not a positive integer" in p.stderr

"""The one-process runs of the bad-input and fault tests (no tests here): the small run they
start, its one error line, a process holding a run directory's lock, a checkpoint file that runs
code when unpickled, lai-export's refusal of it, and a small tmpfs (a full or read-only disk).
The random-token data they train on is tests/conftest.py's `data` fixture."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import CONFIG, ROOT
from support.train import run_train

DOUBLED_WORD = re.compile(r"\b(\w+) \1\b")


def fault_args(data: Path, run: Path, *overrides: str) -> list[str]:
    return [str(CONFIG), f"run.out_dir={run}", f"data.sources=[{{path: '{data}', weight: 1.0}}]",
            "data.seq_len=32", "model.n_layer=2", "model.hidden=64", "model.n_head=2",
            "train.micro_batch=2", "train.steps=4", "train.warmup_steps=1", "train.eval_every=0",
            "train.zero_stage=0", "lai.warmup_steps=0", "log.every=1", "log.histogram_every=0",
            "run.save_every=2", "run.keep_checkpoints=2", *overrides]


def train(data: Path, run: Path, *overrides: str, rc: int = 0, env: dict | None = None
          ) -> subprocess.CompletedProcess:
    """The small run in one process; asserts its exit code."""
    return run_train(fault_args(data, run, *overrides), rc=rc, ranks=1, extra_env=env)


def one_error(p: subprocess.CompletedProcess) -> str:
    """The run's single stderr line `error: ...` (no traceback, no doubled words)."""
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-4000:]
    assert not DOUBLED_WORD.search(errors[0]), errors[0]
    return errors[0]


HOLD = ("import sys, time; from pipeline.train.checkpointing.lock import RunLock; "
        "lock = RunLock(sys.argv[1]); assert lock.acquire() is None; print('held', flush=True); time.sleep(300)")


@contextlib.contextmanager
def held(run: Path):
    """Another process holds `run`'s lock for the block (then is killed, as a killed run
    would leave it); yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


class RunsCode:
    """Unpickling calls os.system: what a crafted checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str):
    """A tmpfs of `size` mounted at `where` for the block (skips the test if mount is refused)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): the "
                    "file-system fault tests need root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def plant(path: Path, marker: Path) -> None:
    """Add a RunsCode payload (touching `marker`) to the torch file `path`."""
    state = torch.load(path, weights_only=False)
    state["payload"] = RunsCode(marker)
    torch.save(state, path)


def export_refused(ckpt: Path, out: Path, capsys) -> str:
    """lai-export CKPT OUT that must be refused: its one error line."""
    from pipeline.train.hf.export_checkpoint import main as lai_export
    with pytest.raises(SystemExit) as e:
        lai_export([str(ckpt), str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists()
    return lines[0]

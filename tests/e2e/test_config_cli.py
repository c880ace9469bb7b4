"""lai-train's command line refuses a bad config before any work: exit 2 and one line naming the
field (one real `python -m pipeline.train` process; the other cases call the same entry point in
this process, sparing an interpreter start each; the config rules themselves:
unit/test_config.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT
from support.train import refused

CASES = [
    (["train.zero_stgae=2"], "unknown key 'train.zero_stgae'"),
    (["train.micro_batch=x"], "train.micro_batch: expected int"),
    (["train.global_batch=100", "train.grad_accum=3"], "train.global_batch:"),
    (["lai.score.sketch_dim=2"], "lai.score.sketch_dim: must be an int >= 4, got 2"),
    (["lai.score.method=exact", "lai.score.sketch_dim=1024"], "lai.score.sketch_dim: 1024 is only used by"),
    (["train.lr=.inf"], "train.lr: expected a finite number, got inf"),     # was: a NaN model
]


def cli_args(data_dir, args: list[str]) -> list[str]:
    return [str(ROOT / "configs" / "tiny_cpu.yaml"), f"data.sources=[{{path: '{data_dir}'}}]", *args]


def test_cli_process_fails_fast_with_one_line(stub_data_dir):
    args, field = CASES[0]
    p = subprocess.run([sys.executable, "-m", "pipeline.train", *cli_args(stub_data_dir, args)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], p.stderr


@pytest.mark.parametrize("args,field", CASES)
def test_cli_fails_fast_with_one_line(stub_data_dir, args, field, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    lines = refused(cli_args(stub_data_dir, args))
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], lines

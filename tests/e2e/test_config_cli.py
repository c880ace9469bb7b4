"""lai-train's command line refuses a bad config before any work: exit 2 and one line naming the
field (a real `python -m pipeline.train` process each; the config rules themselves:
unit/test_config.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT


@pytest.mark.parametrize("args,field", [
    (["train.zero_stgae=2"], "unknown key 'train.zero_stgae'"),
    (["train.micro_batch=x"], "train.micro_batch: expected int"),
    (["train.global_batch=100", "train.grad_accum=3"], "train.global_batch:"),
    (["lai.score.sketch_dim=2"], "lai.score.sketch_dim: must be an int >= 4, got 2"),
    (["lai.score.method=exact", "lai.score.sketch_dim=1024"], "lai.score.sketch_dim: 1024 is only used by"),
    (["train.lr=.inf"], "train.lr: expected a finite number, got inf"),     # was: a NaN model
])
def test_cli_fails_fast_with_one_line(stub_data_dir, args, field):
    p = subprocess.run([sys.executable, "-m", "pipeline.train",
                        str(ROOT / "configs" / "tiny_cpu.yaml"),
                        f"data.sources=[{{path: '{stub_data_dir}'}}]", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], p.stderr

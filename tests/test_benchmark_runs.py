"""benchmarks.common.run_train reuses a finished run only if it ran with the same trainer
arguments (a changed benchmark variant must not be read from a stale run)."""
from __future__ import annotations

import json

import pytest

from benchmarks import common as C


def test_finished_run_is_reused_only_with_the_same_arguments(tmp_path):
    config, run = tmp_path / "config.yaml", tmp_path / "variant" / "seed0"
    (run / "final").mkdir(parents=True)
    args = [str(config), f"run.out_dir={run}", "run.seed=0", "lai.filter=lai"]
    record = {"wall_s": 1.0, "cpu_s": 2.0, "args": args}
    (run.parent / "seed0.time.json").write_text(json.dumps(record))
    assert C.run_train(config, run, 0, ["lai.filter=lai"], 1) == record
    with pytest.raises(SystemExit, match="other trainer arguments.*lai.filter=lai.*lai.filter=loss"):
        C.run_train(config, run, 0, ["lai.filter=loss"], 1)
    with pytest.raises(SystemExit, match="other trainer arguments"):
        C.run_train(config, run, 1, ["lai.filter=lai"], 1)       # another seed

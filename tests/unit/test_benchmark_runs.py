"""benchmarks.lib.runs.run_train reuses a finished run only if it ran with the same trainer
arguments and config (a changed benchmark variant or scenario must not be read from a stale run), and the headroom
scenarios reuse prepared data only for the same documents."""
from __future__ import annotations

import hashlib
import json

import pytest

from benchmarks.lib.runs import run_train


def test_finished_run_is_reused_only_with_the_same_arguments_and_config(tmp_path):
    config, run = tmp_path / "config.yaml", tmp_path / "variant" / "seed0"
    config.write_text("train:\n  steps: 300\n")
    (run / "final").mkdir(parents=True)
    args = [str(config), f"run.out_dir={run}", "run.seed=0", "lai.filter.kind=lai"]
    record = {"wall_s": 1.0, "cpu_s": 2.0, "args": args,
              "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    (run.parent / "seed0.time.json").write_text(json.dumps(record))
    assert run_train(config, run, 0, ["lai.filter.kind=lai"], 1) == record
    config.write_text("train:\n  steps: 1500\n")               # same arguments, new config
    with pytest.raises(SystemExit, match="finished with another .*config.yaml"):
        run_train(config, run, 0, ["lai.filter.kind=lai"], 1)
    config.write_text("train:\n  steps: 300\n")
    with pytest.raises(SystemExit,
                       match="other trainer arguments.*lai.filter.kind=lai.*lai.filter.kind=loss"):
        run_train(config, run, 0, ["lai.filter.kind=loss"], 1)
    with pytest.raises(SystemExit, match="other trainer arguments.*run.seed=0; now run.seed=1"):
        run_train(config, run, 1, ["lai.filter.kind=lai"], 1)       # another seed


def test_prepared_data_is_reused_only_for_the_same_documents(tmp_path):
    """headroom.runs.prepare: a scenario's prepared sources are reused only when the generator
    still makes the same documents (fingerprint in documents.sha256); otherwise a clear error,
    since the runs read from that data would be stale too."""
    from benchmarks.headroom.runs import fingerprint, prepare
    from benchmarks.headroom.scenarios import Scenario
    docs = {"clean": ["a b c"], "bad": ["x y z"]}
    sc = Scenario("toy", "toy", "toy", {"clean": 1.0, "bad": 1.0}, ("bad",), "clean", 0.5, 64,
                  lambda scale: {k: list(v) for k, v in docs.items()})
    for s in sc.weights:                          # as if prepared before
        (tmp_path / "toy" / s).mkdir(parents=True)
        (tmp_path / "toy" / s / "manifest.json").write_text("{}")
    (tmp_path / "toy" / "documents.sha256").write_text(fingerprint(64, docs) + "\n")
    assert prepare(sc, {}, tmp_path) == {s: tmp_path / "toy" / s for s in sc.weights}
    docs["bad"] = ["x y z w"]                     # the generator changed
    with pytest.raises(SystemExit, match="toy: prepared from other documents"):
        prepare(sc, {}, tmp_path)


def test_gpu_check_ratios_pair_modes_at_the_same_batch():
    """benchmarks.gpu_check.overhead.ratios: wall tokens/s of A over B at the same micro-batch
    only, LAI share = LAI time over the LAI-off step of the same compile setting; failed runs
    are left out."""
    from benchmarks.gpu_check.overhead import ratios
    rows = [{"mode": "ref", "batch": 64, "wall_tokens_per_s": 400.0},
            {"mode": "off", "batch": 64, "wall_tokens_per_s": 300.0, "step_s": 2.0,
             "time_lai_s": 0.001},
            {"mode": "sketch", "batch": 64, "wall_tokens_per_s": 270.0, "step_s": 2.2,
             "time_lai_s": 0.1},
            {"mode": "off-compiled", "batch": 64, "wall_tokens_per_s": 320.0, "step_s": 1.6},
            {"mode": "sketch-compiled", "batch": 64, "wall_tokens_per_s": 288.0,
             "step_s": 1.7, "time_lai_s": 0.4},
            {"mode": "off", "batch": 8, "wall_tokens_per_s": 100.0, "step_s": 1.0},
            {"mode": "bare", "batch": 8, "error": "RuntimeError: out of memory"}]
    assert ratios(rows) == {"off/ref@64": 0.75, "off-compiled/ref@64": 0.8,
                            "sketch/off@64": 0.9, "sketch/ref@64": 0.675,
                            "sketch-compiled/off-compiled@64": 0.9,
                            "sketch-compiled/ref@64": 0.72,
                            "lai_share:sketch@64": 0.05, "lai_share:sketch-compiled@64": 0.25}


def test_longer_scenarios_scale_warmups_and_eval_cadence_with_their_steps():
    """A scenario with `length` k trains k times the size's steps; its warmups and eval cadence
    scale alike, so the schedule has the same shape (what --steps does for a whole size)."""
    from benchmarks.headroom.scenarios import SIZES, with_steps
    size = SIZES["cpu"]
    long = with_steps(size, size["steps"] * 5)
    assert long["steps"] == 5 * size["steps"]
    for key in ("warmup", "lai_warmup", "eval_every"):
        assert long[key] == 5 * size[key]
    assert with_steps(size, size["steps"]) == size
    assert with_steps(size, 2)["eval_every"] == 1          # never 0 nor past the last step

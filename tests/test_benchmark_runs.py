"""benchmarks.common.run_train reuses a finished run only if it ran with the same trainer
arguments (a changed benchmark variant must not be read from a stale run), and the headroom
scenarios reuse prepared data only for the same documents."""
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
    with pytest.raises(SystemExit, match="other trainer arguments.*run.seed=0; now run.seed=1"):
        C.run_train(config, run, 1, ["lai.filter=lai"], 1)       # another seed


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

"""lai.mixing through the real trainer on 2 CPU ranks (torchrun, gloo, DeepSpeed): two sources
with one tokenizer, clean sentences and random tokens, the val reference on the clean source.

- the weights move towards the clean source, TensorBoard shows them, RUN/mixing.json holds the
  trajectory and lai-report shows initial against final weights;
- every global micro-batch was drawn with the weights current at its step (replayed from the
  trajectory);
- stopped after N steps and resumed (a checkpoint in the middle of an update window) equals the
  straight 2N-step run: ledger rows (hence batches), the trajectory and the final parameters;
- switching lai.mixing on resume is refused with one line;
- lai.mixing.kind=loss_bandit with LAI off: the bandit mixes (the higher-loss source gains), logs its
  arms, and a run stopped on 2 ranks and resumed on 1 draws the same batches with the same
  restored mixer state as the uninterrupted 2-rank run (later updates: equal up to the float
  summation order of 1 vs 2 ranks, as e2e/test_train_elastic.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from support.train import CONFIG, N, ROOT, env, final_params, ledger, refused, run_train, scalars

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(clean, noise): prepared directories sharing one real sentencepiece tokenizer."""
    import sentencepiece as spm

    from support.datagen import make_data_dir
    from pipeline.format.manifest import load_manifest
    from pipeline.fsutil import sha256_file
    out = tmp_path_factory.mktemp("mixdata")
    rng = np.random.default_rng(0)
    words = "the a cat dog bird sees likes follows big small red quick .".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(8, 30)))) for _ in range(400)]
    (out / "corpus.txt").write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(input=str(out / "corpus.txt"), model_prefix=str(out / "sp"),
                                   vocab_size=48, hard_vocab_limit=False, bos_id=1, eos_id=2,
                                   pad_id=0, unk_id=3, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(out / "sp.model"))
    clean = [np.array(sp.encode(t) + [2]) for t in texts]
    noise = [np.append(rng.integers(4, sp.get_piece_size(), size=40), 2) for _ in range(340)]
    dirs = (make_data_dir(out / "clean", clean[:360], vocab_size=sp.get_piece_size(),
                          source="clean", val_docs=clean[360:]),
            make_data_dir(out / "noise", noise[:300], vocab_size=sp.get_piece_size(),
                          source="noise", val_docs=noise[300:]))
    for d in dirs:
        (d / "tokenizer.model").write_bytes((out / "sp.model").read_bytes())
        m = load_manifest(d)
        m.tokenizer.sha256 = sha256_file(d / "tokenizer.model")
        m.save(d)
    return dirs


def args(data, run: Path, *overrides: str) -> list[str]:
    clean, noise = data
    return [str(CONFIG), f"run.out_dir={run}",
            f"data.sources=[{{path: '{clean}', weight: 1.0}}, {{path: '{noise}', weight: 1.0}}]",
            f"data.val_sources=[{{path: '{clean}', weight: 1.0}}]", "data.seq_len=32",
            "model.n_layer=2", "model.hidden=64", "model.n_head=2", "train.micro_batch=4", "train.global_batch=0",
            f"train.steps={2 * N}", "train.lr=1e-2", "train.schedule=constant",
            "train.warmup_steps=2", "train.zero_stage=1", "train.eval_every=4",
            "train.eval_batches=2", "lai.filter.kind=none", "lai.mixing.kind=value", "lai.score.reference=val",
            "lai.warmup_steps=1",
            "lai.mixing.every=2", "lai.mixing.eta=2.0", "lai.mixing.ema=0.5",
            "lai.mixing.average=true",
            "log.every=1", "run.save_every=4", *overrides]


def train(data, run: Path, *overrides: str) -> str:
    p = run_train(args(data, run, *overrides))
    return p.stdout + p.stderr


def test_mixing_run_follows_its_weights_and_resumes_bit_for_bit(data, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    out = train(data, straight)
    assert f"step {2 * N}/{2 * N} loss" in out and " mix clean " in out   # weights on the console
    assert "LAI on (reference val)" in out                            # the start line
    assert "(per source: clean " in out and ", noise " in out
    train(data, split, f"train.steps={N}")
    out = train(data, split)                              # resumed from step N, mid-window
    assert f"resumed from {split / 'checkpoints' / f'step_{N:08d}'}" in out
    la, lb = ledger(straight), ledger(split)
    assert la.size == lb.size == 2 * N * 8
    for f in la.dtype.names:
        assert np.array_equal(la[f], lb[f], equal_nan=True), f"ledger column {f} differs"
    pa, pb = final_params(straight), final_params(split)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    traj = json.loads((straight / "mixing.json").read_text())
    assert traj == json.loads((split / "mixing.json").read_text())

    # updates after the LAI warmup (step 1), every 2 steps; the clean source gained
    assert traj["sources"] == ["clean", "noise"] and traj["initial"] == [0.5, 0.5]
    assert traj["steps"] == [0, 3, 5, 7] and traj["final"] == traj["weights"][-1]
    assert traj["final"][0] > 0.55 and traj["weights_now"][-1][0] > traj["final"][0], traj
    assert traj["average"] and traj["mixer"] == "ValueEG"
    np.testing.assert_allclose(traj["final"], np.mean(np.array(traj["weights_now"]), axis=0),
                               rtol=1e-12)                 # the time-average is what is drawn

    # each step's global micro-batch is the allocation of the weights current at that step
    from pipeline.data import PackedDataset
    from pipeline.data.mixture import DynamicMixture
    ds = PackedDataset([(d, 1.0) for d in data], 32, seed=0, mixing=True)
    replay = DynamicMixture(traj["initial"])
    updates = dict(zip(traj["steps"], traj["weights"]))
    for step in range(1, 2 * N + 1):
        src, k = replay.next_batch(8)
        assert sorted(la["seq_id"][la["step"] == step].tolist()) == sorted(ds.seq_ids(src, k).tolist())
        if step in updates:
            replay.set_weights(updates[step])

    tb = scalars(straight)
    weights = dict(tb["lai_mixing/clean/weight"])
    assert set(weights) == set(range(1, 2 * N + 1))
    assert {f"lai_mixing/noise/{k}" for k in ("weight_now", "weight_avg", "reward", "value",
                                              "loss", "sequences")} <= set(tb)
    assert dict(tb["lai_mixing/clean/sequences"])[2 * N] + dict(
        tb["lai_mixing/noise/sequences"])[2 * N] == 2 * N * 8
    assert weights[2 * N] == pytest.approx(traj["final"][0])

    from pipeline.report.valuation import build_report
    report = build_report(straight)
    mix = {s["source"]: s for s in report["mixing"]["sources"]}
    assert mix["clean"]["initial"] == 0.5 and mix["clean"]["final"] == traj["final"][0]
    served = np.isin(la["seq_id"] % 2, [0]).mean()
    assert mix["clean"]["served"] == pytest.approx(served)
    assert "## Mixture (lai.mixing)" in (straight / "report" / "report.md").read_text()

    # val loss per source: the val set (clean) and the training source with a val split (noise),
    # in TensorBoard and the report; the clean val set is the val mix itself, batch for batch
    val = report["val"]
    assert sorted(val["sources"]) == ["clean", "noise"] and val["mix"]["steps"] == [4, 8]
    for name in ("clean", "noise"):
        steps, losses = zip(*tb[f"val/{name}/loss"])
        assert val["sources"][name]["steps"] == list(steps)
        assert val["sources"][name]["loss"] == pytest.approx(list(losses))
    assert val["sources"]["clean"]["loss"] == pytest.approx(val["mix"]["loss"], rel=1e-6)
    assert val["sources"]["clean"]["loss"][-1] < val["sources"]["noise"]["loss"][-1]
    assert "## Val loss per source" in (straight / "report" / "report.md").read_text()

    # lai.mixing decides the seq_id layout: switching it on resume is refused, one line
    lines = refused(args(data, split, "lai.mixing.kind=none", f"train.steps={3 * N}"))
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: run.resume:") and "lai.mixing.kind: 'value' -> 'none'" in lines[0]


BANDIT = ["lai.enabled=false", "lai.mixing.kind=loss_bandit", "lai.mixing.average=false",
          "train.global_batch=8", "train.micro_batch=8", "train.eval_every=0",
          "log.histogram_every=0"]


def test_loss_bandit_without_lai_resumes_on_one_rank(data, tmp_path):
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    out = train(data, straight, *BANDIT)
    assert "LAI off" in out and "source mixing (loss_bandit)" in out
    train(data, elastic, *BANDIT, f"train.steps={N}")
    p = subprocess.run([sys.executable, "-m", "pipeline.train", *args(data, elastic, *BANDIT)],
                       env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "world: 2 -> 1" in p.stdout + p.stderr, p.stderr[-3000:]
    a, b = (json.loads((r / "mixing.json").read_text()) for r in (straight, elastic))
    assert a["mixer"] == "LossBandit" and a["steps"] == b["steps"] == [0, 3, 5, 7]
    assert a["weights"][:3] == b["weights"][:3]        # updates up to the checkpoint: bit for bit
    np.testing.assert_allclose(b["weights"], a["weights"], rtol=1e-5)
    assert a["sequences"] == b["sequences"] and sum(a["sequences"]) == 2 * N * 8
    assert a["weights_now"][-1][1] > 0.5               # random tokens: the higher loss gains
    la, lb = ledger(straight), ledger(elastic)
    assert np.array_equal(la["seq_id"], lb["seq_id"]) and set(lb["rank"][lb["step"] > N]) == {0}
    tb = scalars(straight)
    loss = dict(tb["lai_mixing/noise/loss"])
    assert sorted(loss) == list(range(3, 2 * N + 1)) and loss[2 * N] > dict(
        tb["lai_mixing/clean/loss"])[2 * N]
    assert "lai_mixing/clean/value" not in tb          # no LAI values: not logged

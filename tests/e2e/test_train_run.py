"""lai-train end to end on 2 CPU ranks (torchrun, gloo, real DeepSpeed), tiny Llama/GPT-2 models:

- ZeRO 0-3 train with LAI on and the loss goes down (ZeRO 1 with optimizer offload, ZeRO 2 in
  bf16); TensorBoard holds the scalars, the ledger
  matches the masks and the TensorBoard excluded fractions, lai-report runs on the run dir;
- resume: 2N straight == N + N (ZeRO 2 with Adam-aware scoring, whose factors the checkpoint
  holds, via a finished run extended with train.steps: warned)
  and == run stopped by SIGTERM mid-run + re-run (ZeRO 3): identical per-sequence losses,
  values, masks and final parameters; a breaking config change is refused with one line;
- LAI disabled == LAI scoring without filtering (bitwise: scoring never perturbs training);
- non-finite gradients: every rank skips, the run aborts after train.max_nonfinite_steps.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from support.train import (N, ROOT, env, final_params, ledger, loss_by_step, refused, scalars, torchrun, train,
                           train_args)

pytestmark = pytest.mark.slow


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = ledger(a), ledger(b)
    assert la.size == lb.size == 2 * N * 8
    for f in ("step", "seq_id", "kept", "loss", "value"):
        assert np.array_equal(la[f], lb[f]), f"ledger column {f} differs"
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"final parameter {k} differs"


# ---------------------------------------------------------------- ZeRO stages

def test_zero0_trains_with_lai_logs_and_ledger(animals_data, tmp_path):
    run = tmp_path / "z0"
    # the raw value against threshold 0 (normalize=none: no memory), so the mask reads off the
    # ledger's values; the normalised default is exercised by the ZeRO 2 resume test
    out = train(animals_data, run, "train.zero_stage=0", "run.keep_checkpoints=1", "lai.filter.normalize=none")
    losses = loss_by_step(run)
    assert losses[-1] < losses[0] - 0.3, losses
    tb = scalars(run)
    for tag in ("train/loss", "train/loss_kept", "train/lr", "train/grad_norm", "val/loss",
                "val/ppl", "lai/excluded_frac", "lai/kept_tokens", "perf/tokens_per_s",
                "perf/tflops_per_device", "lai_source/animals/excluded_frac",
                "lai_source/animals/mean_value_norm"):
        assert tag in tb, f"{tag} missing from TensorBoard: {sorted(tb)}"
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 2 * N + 1))
    for tag in ("time_data_s", "time_forward_s", "time_lai_s", "time_backward_step_s",
                "tokens_per_s_rank", "peak_memory_gib"):       # spread over the ranks, one run
        lo, hi = dict(tb[f"perf_ranks/{tag}_min"]), dict(tb[f"perf_ranks/{tag}_max"])
        assert all(0 <= lo[s] <= hi[s] for s in lo), tag
    assert {int(v) for _, v in tb["perf_ranks/slowest_rank"]} <= {0, 1}
    assert not [p for p in (run / "tb").iterdir() if p.is_dir()]
    # ledger: every sequence of every step once; masks agree with TensorBoard and the policy
    rows = ledger(run)
    assert rows.size == 2 * N * 8 and set(rows["rank"]) == {0, 1}
    excluded = dict(tb["lai/excluded_frac"])
    for s in range(1, 2 * N + 1):
        r = rows[rows["step"] == s]
        assert np.isclose((~r["kept"]).mean(), excluded[s])
        assert (r["value"][~r["kept"]] <= 0).all()          # only non-positive values dropped
        assert (~r["kept"]).sum() <= 2                      # max_exclude_frac 0.25 of 8
    assert (~rows["kept"]).any(), "LAI never excluded anything: the test data cannot show it"
    assert not (~rows["kept"][rows["step"] == 1]).any()     # lai.warmup_steps=1
    assert "done: 8 steps" in out
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_00000008"], ckpts           # saved at 4 and 8, kept the last 1
    # the run dir is complete: resolved config, DeepSpeed JSON without a scheduler, final model
    import json

    import transformers
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 8 and "scheduler" not in ds and "optimizer" not in ds
    assert (run / "config.yaml").is_file() and (run / "data.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(run / "final")
    tok = transformers.AutoTokenizer.from_pretrained(run / "final")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(animals_data / "tokenizer.model"))
    text = "the quick cat  sees the dog ."
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    assert model.config.vocab_size == sp.get_piece_size()
    from pipeline.report.valuation import build_report
    build_report(run)
    assert (run / "report" / "report.md").is_file()


# ---------------------------------------------------------------- resume

def test_zero2_resume_equals_straight_run(animals_data, tmp_path):
    # constant LR: a shorter run shares the schedule; bf16: ZeRO 2 with the bf16 optimizer;
    # normalised values with memory across epochs, and Adam factors read at steps 2, 4, 6, 8 (the
    # resumed step 5 scores with the saved ones): state that must survive too
    const = ["train.zero_stage=2", "train.schedule=constant", "train.precision=bf16",
             "lai.filter.normalize=zscore", "lai.filter.threshold=-0.5", "lai.memory.weight=1.0",
             "lai.score.precondition=adam", "lai.score.precondition_every=2", "lai.score.reference=val"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(animals_data, straight, *const)
    train(animals_data, split, *const, f"train.steps={N}")
    saved = torch.load(split / "checkpoints" / f"step_{N:08d}" / "rank-00001.pt",
                       weights_only=False)["lai"]["precond"]
    assert saved["step"] == N and len(saved["factors"]["factors"]) == 2 * 7 + 1
    out = train(animals_data, split, *const)                        # extends the finished run
    assert f"resumed from {split / 'checkpoints' / f'step_{N:08d}'}" in out
    assert f"train.steps: {N} -> {2 * N}" in out                # harmless change: warned
    assert_same_run(straight, split)
    assert (ledger(straight)["loss"][:8].mean() - ledger(straight)["loss"][-8:].mean()) > 0.3
    # a change that breaks resumption is refused before anything starts, one line, exit 2
    lines = refused(train_args(animals_data, split, *const, "model.hidden=32"))
    assert len(lines) == 1 and lines[0].startswith("error: run.resume:"), lines
    assert "model.hidden: 64 -> 32" in lines[0]


def test_zero3_sigterm_then_resume_equals_straight_run(animals_data, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(animals_data, straight, "train.zero_stage=3")
    losses = loss_by_step(straight)
    assert losses[-1] < losses[0] - 0.3, losses
    proc = subprocess.Popen(torchrun(train_args(animals_data, stopped, "train.zero_stage=3",
                                            "run.save_every=0")),
                            env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"step 2/{2 * N} " in line:        # mid-run: signal the trainers (not the launcher)
            for child in psutil.Process(proc.pid).children():
                child.send_signal(signal.SIGTERM)
            break
    seen += proc.stdout.readlines()
    proc.wait(timeout=120)
    out = "".join(seen)
    assert "stopped by SIGTERM" in out, out[-3000:]
    assert "exitcode  : 75" in out or proc.returncode == 75, out[-3000:]
    from pipeline.train.checkpointing import checkpoint
    ckpt = checkpoint.latest(stopped)
    assert ckpt is not None and checkpoint.read_meta(ckpt)["step"] < 2 * N
    assert not (stopped / "final").exists()
    train(animals_data, stopped, "train.zero_stage=3", "run.save_every=0")
    assert_same_run(straight, stopped)
    import transformers                       # ZeRO-3 export gathered every parameter
    _, info = transformers.AutoModelForCausalLM.from_pretrained(stopped / "final",
                                                               output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info


def test_resume_with_changed_lai_options_works_with_a_note(animals_data, tmp_path):
    """A finished run resumed with train.steps raised and other LAI options (pairing, hence the
    resolved sketch size) continues, with one line naming what changed; the val reference cached
    under the old options is recomputed (values stay finite). Before: a warning that the change
    was harmless, then a crash in LAIScorer.load_state_dict."""
    run = tmp_path / "changed"
    common = ["train.zero_stage=0", "lai.score.reference=val", "train.eval_every=0"]
    train(animals_data, run, *common, f"train.steps={N}")
    out = train(animals_data, run, *common, "lai.score.pairing=pooled")
    note = [line for line in out.splitlines() if "resumed from" in line]
    assert len(note) == 1, out[-3000:]
    assert "lai.score.pairing: 'token_pair' -> 'pooled'" in note[0], note
    assert "lai.score.sketch_dim: 262144 -> 4096" in note[0] and f"train.steps: {N} -> {2 * N}" in note[0]
    rows = ledger(run)
    assert sorted(set(rows["step"])) == list(range(1, 2 * N + 1))
    assert np.isfinite(rows["value"]).all()
    import yaml
    saved = yaml.safe_load((run / "config.yaml").read_text())["lai"]
    assert (saved["score"]["pairing"], saved["score"]["sketch_dim"]) == ("pooled", 4096)   # resolved


# ---------------------------------------------------------------- LAI off, faults

def test_lai_disabled_equals_unfiltered_lai_run(animals_data, tmp_path):
    """ZeRO 1 with the optimizer offloaded: LAI scoring (filter in warmup) leaves training
    bitwise identical to plain training, and the loss goes down."""
    off, scored = tmp_path / "off", tmp_path / "scored"
    common = ["train.zero_stage=1", "train.offload_optimizer=cpu"]
    train(animals_data, off, *common, "lai.enabled=false", "lai.filter.kind=none")
    train(animals_data, scored, *common, "lai.filter.kind=lai", "lai.warmup_steps=100")
    a, b = ledger(off), ledger(scored)
    assert np.isnan(a["value"]).all() and np.isfinite(b["value"]).all()
    assert np.array_equal(a["loss"], b["loss"]) and a["kept"].all() and b["kept"].all()
    pa, pb = final_params(off), final_params(scored)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    losses = loss_by_step(scored)
    assert losses[-1] < losses[0] - 0.3, losses


def test_nonfinite_steps_are_skipped_then_abort(animals_data, tmp_path):
    """(one process: that every rank agrees on skipping is tested in test_train_step)"""
    args = train_args(animals_data, tmp_path / "nan", "train.zero_stage=0", "train.lr=1e30",
                 "train.warmup_steps=0", "train.min_lr=0", "train.max_nonfinite_steps=2",
                 "train.eval_every=0", "train.micro_batch=8")
    p = subprocess.run([sys.executable, "-m", "pipeline.train", *args], env=env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "update skipped (1 in a row)" in p.stdout
    assert p.stderr.strip().splitlines()[-1].startswith(
        "error: train.max_nonfinite_steps: 2 steps in a row")


def test_time_limit_saves_and_exits_75_then_resumes(animals_data, tmp_path):
    """(one process, no launcher: the exit code is the trainer's own)"""
    run = tmp_path / "limited"
    base = [sys.executable, "-m", "pipeline.train",
            *train_args(animals_data, run, "train.steps=3", "train.eval_every=0", "run.save_every=0")]
    p = subprocess.run([*base, "run.time_limit_s=0.001"], env=env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 75, p.stdout + p.stderr
    assert "stopped by run.time_limit_s at step 1" in p.stdout
    from pipeline.train.checkpointing import checkpoint
    assert checkpoint.read_meta(checkpoint.latest(run))["step"] == 1
    p = subprocess.run(base, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed from" in p.stdout and (run / "final" / "config.json").is_file()
    assert sorted(set(ledger(run)["step"])) == [1, 2, 3]

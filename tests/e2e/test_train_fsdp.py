"""train.backend=fsdp2 against DeepSpeed ZeRO 3, on 2 real gloo ranks.

- Engine level (one process group, the same seeded Llama, the same batches): per-sequence LAI
  values of every pairing, sketch and exact, equal ZeRO 3's; three clipped, masked optimizer
  steps give the same losses and gradient norms; Adam's second moments read from the DTensor
  shards (lai.score.precondition=adam) equal those read from ZeRO 3's partitions; a NaN gradient in
  one rank's shard skips the update on both.
- Through the trainer: a run killed with SIGKILL mid-run resumes on 1 rank, then on 2 again
  (DCP reshards natively), and every step trains the same sequences with the same keep
  decisions, losses and values as an uninterrupted run (on 1 rank: the same global
  micro-batches); lai-export of the last checkpoint equals RUN/final, and of one with a
  truncated DCP shard fails in one line (exit 2), found before DCP reads it (checkpoint.damage,
  so run.resume=auto falls back to an earlier checkpoint as under DeepSpeed).
Tolerances: fp32 throughout; the two backends (and 1 vs 2 ranks) differ only in the order of
float sums: losses 1e-5 absolute, values 1e-4 relative (1e-3 across world sizes, as the ZeRO
elastic test).
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from support.engine import B, run_on_ranks, seeded_model, tiny_cfg
from pipeline.comm import free_port
from support.train import (ROOT, assert_export_equals_final, assert_two_one_two_equals_straight,
                           env, final_params, make_animals_data, train, train_args)
from pipeline.lai import FilterSettings, ScoreSettings

pytestmark = pytest.mark.slow


def _batch(rank: int, micro: int):
    g = torch.Generator().manual_seed(100 * micro + rank)
    ids = torch.randint(0, 128, (B, 16), generator=g)
    targets = torch.roll(ids, -1, 1)
    targets[rank, : 5 + micro] = -100
    return ids, targets


def _engines(rank: int):
    """(ZeRO 3 engine, FSDP2 engine) over the same seeded model, each with its guarded AdamW."""
    from pipeline.comm import Comm
    from pipeline.train import engine
    from pipeline.train.optim import SkipGate, build_optimizer
    from pipeline.train.runtime import DistInfo
    info = DistInfo(rank, 2, rank, torch.device("cpu"))
    out = []
    for backend in ("deepspeed", "fsdp2"):
        cfg = tiny_cfg(3, "llama")
        cfg.train.backend, cfg.train.grad_clip = backend, 0.05
        gate = SkipGate(Comm.resolve(), info.device)
        out.append(engine.build(cfg, info, seeded_model(cfg),
                                lambda m: build_optimizer(m, cfg.train, gate, offload=False)))
    return out


def _values(eng, rank: int, method: str, pairing: str) -> torch.Tensor:
    from pipeline.lai import LAISettings, Selector, per_sequence_loss
    sel = Selector(LAISettings(enabled=True, filter=FilterSettings(kind="lai"),
                               score=ScoreSettings(reference="global", method=method,
                                                   pairing=pairing)).resolved(), seed=0)
    ids, tgt = _batch(rank, 0)
    with sel.capture(eng.module) as cap:
        logits = eng(input_ids=ids).logits
    values, _, _ = sel.select(1, cap, logits, tgt, per_sequence_loss(logits, tgt),
                              torch.arange(B) + rank * B)
    return values


def _train(eng, rank: int) -> list[tuple[float, float]]:
    """Three optimizer steps of masked loss (one sequence dropped per rank): (loss, grad norm)."""
    from pipeline.comm import Comm
    from pipeline.lai import per_sequence_loss
    from pipeline.train.step import masked_loss
    out = []
    for micro in range(3):
        ids, tgt = _batch(rank, micro + 1)
        keep = torch.arange(B) != micro % B
        loss, stats = masked_loss(per_sequence_loss(eng(input_ids=ids).logits, tgt),
                                  (tgt != -100).sum(1), keep, Comm.resolve())
        eng.backward(loss)
        eng.step()
        out.append((stats.kept_loss, float(eng.get_global_grad_norm())))
    return out


def _moments(eng, opt) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from pipeline.comm import Comm
    from pipeline.train.moments import MomentReader
    weights = [(n, m.weight) for n, m in eng.module.named_modules()
               if isinstance(m, torch.nn.Linear)]
    return MomentReader(eng, opt, Comm.resolve(), torch.device("cpu"))(weights)


def _fsdp_equals_zero3(rank: int) -> None:
    from pipeline.lai.kernels.pairings import PAIRINGS
    (ds, ds_opt), (fs, fs_opt) = _engines(rank)
    assert type(fs.module.lm_head.weight).__name__ == "DTensor"
    for method, pairing in itertools.product(("exact", "sketch"), PAIRINGS):
        want, got = _values(ds, rank, method, pairing), _values(fs, rank, method, pairing)
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9, msg=f"{method} {pairing}")
    want, got = _train(ds, rank), _train(fs, rank)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-6)
    assert got[0][1] > 0.05                                  # the clip mattered
    want, got = _moments(ds, ds_opt), _moments(fs, fs_opt)
    assert want.keys() == got.keys() and len(want) == 2 * 7 + 1     # + lm_head
    for name in want:
        for w, g in zip(want[name], got[name]):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=0, msg=name)
    _nan_on_one_rank_skips_on_both(fs, fs_opt, rank)
    ds.destroy()


def _nan_on_one_rank_skips_on_both(eng, opt, rank: int) -> None:
    """A non-finite gradient in rank 1's shard only: the engine's global norm is NaN on both
    ranks, so both skip the update (the gate takes the norm's verdict, no check of its own)."""
    from pipeline.lai import per_sequence_loss
    before = [p.to_local().clone() for p in eng.module.parameters()]
    ids, tgt = _batch(rank, 9)
    eng.backward(per_sequence_loss(eng(input_ids=ids).logits, tgt).mean())
    if rank == 1:
        with torch.no_grad():
            eng.module.lm_head.weight.grad.to_local()[0, 0] = float("nan")
    eng.step()
    assert opt.gate.close(eng) and np.isnan(eng.get_global_grad_norm())
    assert all(torch.equal(p.to_local(), b) for p, b in zip(eng.module.parameters(), before))


def test_fsdp2_scores_trains_and_reads_moments_like_zero3():
    run_on_ranks(_fsdp_equals_zero3)


# ---------------------------------------------------------------- through the trainer

FSDP = ["train.backend=fsdp2", "train.zero_stage=3", "train.global_batch=8",
        "train.micro_batch=8", "train.schedule=constant", "train.eval_every=0",
        "run.save_every=4"]


def _kill_at(args: list[str], line_starts: str) -> str:
    """launch/train.sh (2 CPU ranks; it picks torchrun for fsdp2); SIGKILL to its whole process
    group when a line containing `line_starts` appears; the output until then."""
    environ = {**env(), "MASTER_PORT": str(free_port()), "CUDA_VISIBLE_DEVICES": "",
               "LAI_CPU_RANKS": "2"}
    proc = subprocess.Popen([str(ROOT / "launch" / "train.sh"), *args], env=environ, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line_starts in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return "".join(seen)


def test_fsdp2_kill9_then_resume_on_one_then_two_ranks_equals_straight_run(tmp_path):
    (tmp_path / "data").mkdir()
    data = make_animals_data(tmp_path / "data")
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(data, straight, *FSDP, ranks=1)      # the same global micro-batches (8 x 1 x 1)
    out = _kill_at(train_args(data, run, *FSDP), "step 5/8 ")
    assert "step 5/8" in out and "FSDP2 fully_shard per block" in out, out[-3000:]
    assert not (run / "checkpoints" / "step_00000008").exists()
    out = train(data, run, *FSDP, "train.steps=6", ranks=1)
    note = next(line for line in out.splitlines() if "resumed from" in line)
    assert "step_00000004 at step 4" in note and "world: 2 -> 1" in note, note
    out = train(data, run, *FSDP)
    note = next(line for line in out.splitlines() if "resumed from" in line)
    assert "at step 6" in note and "world: 1 -> 2" in note, note

    assert_two_one_two_equals_straight(straight, run)
    assert_export_equals_final(run, tmp_path / "exp")
    final, want = final_params(run), final_params(straight)
    assert all(torch.allclose(final[k], want[k], rtol=0, atol=1e-4) for k in final)
    # a damaged DCP shard: one line naming it, exit 2 (resuming from it says the same)
    shard = next((run / "checkpoints" / "step_00000006" / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    p = subprocess.run([sys.executable, "-m", "pipeline.train.hf.export_checkpoint",
                        str(shard.parent.parent), str(tmp_path / "exp4")], env=env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"error: {shard.parent.parent}: dcp/{shard.name} is truncated ("), \
        p.stderr


def test_launcher_passes_the_trainers_exit_75_on(tmp_path):
    """torchrun exits 1 when a rank fails; pipeline.train.launcher gives the ranks' 75 (stopped
    after a checkpoint: the Slurm script requeues on it), else the first failed rank's code
    (torchrun stops the other ranks when it sees the first fail)."""
    script = tmp_path / "rank.py"
    script.write_text("import os, sys\nsys.exit(int(os.environ['CODES'].split(',')"
                      "[int(os.environ['RANK'])]))\n")
    for codes, want in (("75,75", 75), ("3,0", 3)):
        p = subprocess.run([sys.executable, "-m", "pipeline.train.launcher", "--nproc_per_node",
                            "2", "--master_port", str(free_port()), str(script)],
                           env={**env(), "CODES": codes}, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == want, (codes, p.stderr[-2000:])

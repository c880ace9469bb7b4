"""run.continue_from on a real 2-rank DeepSpeed ZeRO-2 run (torchrun, gloo): a new run starts
from another run's checkpoint with its optimizer state, a new data mix, seed and LR schedule, and
records where it came from. The same run checks the run's monitoring outputs: one TensorBoard
run for both ranks, RUN/metrics.jsonl equal to TensorBoard, and W&B in offline mode."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from support.train import (ROOT, env, make_animals_data, refused, scalars, torchrun, train,
                           train_args, wait_for_wandb_history)


def optimizer_states(ckpt) -> list[dict]:
    """Each rank's ZeRO-2 AdamW state (moments and step per param group) and fp32 partition."""
    out = []
    for rank in range(2):
        d = torch.load(ckpt / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False)
        o = d["optimizer_state_dict"]
        out.append({"state": o["base_optimizer_state"]["state"],
                    "fp32": o["single_partition_of_fp32_groups"]})
    return out


@pytest.mark.slow
def test_continue_from_keeps_optimizer_state_new_schedule_and_lineage(tmp_path):
    data = make_animals_data(tmp_path)
    src, cont = tmp_path / "src", tmp_path / "cont"
    train(data, src, "train.steps=4")
    ckpt = src / "checkpoints" / "step_00000004"

    # step 1 of the continued run is skipped (a NaN loss: no update), so its step-1 checkpoint
    # holds exactly the optimizer state the run started with
    args = train_args(data, cont, f"run.continue_from={ckpt}", "train.steps=3",
                      "train.schedule=linear", "train.warmup_steps=0", "train.min_lr=0",
                      "run.seed=1", f"data.sources=[{{path: '{data}', weight: 2.0}}]",
                      "run.save_every=1", "run.keep_checkpoints=3", "log.wandb=true")
    p = subprocess.run(torchrun(args), cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**env(), "LAI_TEST_NONFINITE_LOSS": "1", "WANDB_MODE": "offline"})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert f"continued from {ckpt} (step 4): model and optimizer state kept" in out

    start, source = optimizer_states(cont / "checkpoints" / "step_00000001"), optimizer_states(ckpt)
    for a, b in zip(start, source):
        for group in b["state"]:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(a["state"][group][key], b["state"][group][key]), key
        assert all(torch.equal(x, y) for x, y in zip(a["fp32"], b["fp32"]))
    end = optimizer_states(cont / "checkpoints" / "step_00000003")
    assert all(int(s["step"]) == 4 + 2 for r in end for s in r["state"].values())   # 2 applied

    sc = scalars(cont)
    lr = dict(sc["train/lr"])
    assert [lr[s] for s in (1, 2, 3)] == pytest.approx([1e-2 * (1 - s / 3) for s in (1, 2, 3)])
    assert dict(sc["train/skipped_steps"])[3] == 1

    lineage = json.loads((cont / "lineage.json").read_text())
    assert lineage["continued_from"]["checkpoint"] == str(ckpt.resolve())
    assert lineage["continued_from"]["run_dir"] == str(src.resolve())
    assert lineage["continued_from"]["step"] == 4 and lineage["parent"] is None
    for change in ("train.schedule: 'cosine' -> 'linear'", "run.seed: 0 -> 1",
                   "train.steps: 4 -> 3"):
        assert change in lineage["changes"]

    # monitoring: one TensorBoard run for 2 ranks, with the spread over the ranks
    assert [q.name for q in (cont / "tb").iterdir() if q.is_dir()] == []
    assert {"perf_ranks/tokens_per_s_rank_min", "perf_ranks/slowest_rank"} <= set(sc)
    rows = [json.loads(line) for line in (cont / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for tag in ("train/lr", "lai/excluded_frac", "val/loss"):
        assert [(r["step"], pytest.approx(r[tag], rel=1e-6)) for r in rows if tag in r] == sc[tag]
    [run_file] = (cont / "wandb").glob("offline-run-*/run-*.wandb")
    history = wait_for_wandb_history(run_file, 3)
    assert [(h["_step"], h["train/lr"]) for h in history if "train/lr" in h] == \
        [(r["step"], r["train/lr"]) for r in rows]


    # a checkpoint of another model shape: refused before any rank starts, in one line
    args = train_args(data, tmp_path / "other", f"run.continue_from={ckpt}", "model.hidden=32")
    stderr = "\n".join(refused(["--check", *args]))
    assert "run.continue_from:" in stderr and "model.hidden: 64 -> 32" in stderr

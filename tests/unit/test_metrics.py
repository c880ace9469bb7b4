"""TensorBoard metrics read back with tensorboard's own EventAccumulator; FLOPs formula against
torch's FLOP counter on a real (tiny) HF model. (W&B and ZeRO-3:
e2e/test_metrics_wandb_zero3.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.train.flops import matmul_params, mfu, model_flops_per_token
from pipeline.train.metrics import Metrics, rank_spread, source_scalars
from pipeline.train.sinks import JsonlSink


def events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalars_histograms_and_rank_runs(tmp_path):
    world = 2
    ms = [Metrics(tmp_path, rank, world) for rank in range(world)]
    values = np.array([-2.0, -0.5, 0.25, 1.0, 3.0, np.nan, np.inf])
    for step in range(3):
        for m in ms:                        # every rank makes the same calls, as the loop does
            m.scalars(step, {"train/loss": 4.0 - step, "lai/excluded_frac": torch.tensor(0.25)})
            m.histogram(step, "lai/value", torch.from_numpy(values * (step + 1)))
            m.histogram(step, "lai/empty", [])
    ms[0].text("config", "run:\n  seed: 0")
    for m in ms:
        m.close()

    acc = events(tmp_path)
    assert scalars(acc, "train/loss") == [(0, 4.0), (1, 3.0), (2, 2.0)]   # once, not per rank
    assert scalars(acc, "lai/excluded_frac") == [(s, 0.25) for s in range(3)]
    hist = acc.Histograms("lai/value")
    assert [h.step for h in hist] == [0, 1, 2]
    for h in hist:                                     # non-finite values dropped, rest binned
        f = values[np.isfinite(values)] * (h.step + 1)
        assert h.histogram_value.num == 5
        assert h.histogram_value.min == f.min() and h.histogram_value.max == f.max()
        assert h.histogram_value.sum == pytest.approx(f.sum())
    assert "lai/empty" not in acc.Tags()["histograms"]
    [note] = acc.Tensors("config/text_summary")
    assert note.tensor_proto.string_val == [b"run:\n  seed: 0"]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []   # one run, no rank runs


def test_rank_spread_min_max_and_slowest_rank():
    per_rank = [{"perf/tokens_per_s_rank": 900.0, "perf/time_data_s": 0.5},
                {"perf/tokens_per_s_rank": 400.0, "perf/time_data_s": 0.1},
                {"perf/tokens_per_s_rank": 700.0, "perf/time_data_s": 0.2}]
    assert rank_spread(per_rank) == {
        "perf_ranks/tokens_per_s_rank_min": 400.0, "perf_ranks/tokens_per_s_rank_max": 900.0,
        "perf_ranks/time_data_s_min": 0.1, "perf_ranks/time_data_s_max": 0.5,
        "perf_ranks/slowest_rank": 1.0}


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_jsonl_has_tensorboards_scalars_once_per_step_also_after_a_resume(tmp_path):
    """A run logs steps 1-9 (train scalars each step, val every 3rd, in a second call), is
    killed mid-line after its step-5 checkpoint, and resumes at step 6 (purge_step=6): the file
    then holds each step once, the resumed values from step 6 on, the same as TensorBoard."""
    path = tmp_path / "metrics.jsonl"

    def log(m, steps, offset):
        for step in steps:
            m.scalars(step, {"train/loss": offset + step, "lai/excluded_frac": 0.25})
            if step % 3 == 0:
                m.scalars(step, {"val/loss": offset - step, "train/grad_norm": float("nan")})

    with Metrics(tmp_path, 0, 1, sinks=[JsonlSink(path)]) as m:
        log(m, range(1, 10), 0.0)
    with open(path, "a") as f:
        f.write('{"step": 10, "train/lo')                   # torn by the kill
    with Metrics(tmp_path, 0, 1, purge_step=6, sinks=[JsonlSink(path, purge_step=6)]) as m:
        log(m, range(6, 10), 100.0)
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == list(range(1, 10))
    for r in rows:
        offset = 100.0 if r["step"] >= 6 else 0.0
        want = {"step": r["step"], "train/loss": offset + r["step"], "lai/excluded_frac": 0.25}
        if r["step"] % 3 == 0:
            want.update({"val/loss": offset - r["step"], "train/grad_norm": None})
        assert r == want
    acc = events(tmp_path)
    for tag in ("train/loss", "val/loss"):
        assert scalars(acc, tag) == [(r["step"], r[tag]) for r in rows if tag in r]


def test_purge_step_hides_the_interrupted_tail(tmp_path):
    with Metrics(tmp_path, 0, 1, flush_secs=1) as m:
        for step in range(10):
            m.scalars(step, {"train/loss": float(step)})
    with Metrics(tmp_path, 0, 1, purge_step=6) as m:   # resumed at step 6
        for step in range(6, 10):
            m.scalars(step, {"train/loss": 100.0 + step})
    want = [(s, float(s)) for s in range(6)] + [(s, 100.0 + s) for s in range(6, 10)]
    assert scalars(events(tmp_path), "train/loss") == want


def test_source_scalars_match_direct_computation():
    rng = np.random.default_rng(0)
    sources = list(rng.choice(["wiki", "code", "web/forum"], size=50))
    values = rng.normal(size=50)
    kept = values > 0.3
    got = source_scalars(sources, torch.from_numpy(values), torch.from_numpy(kept))
    want = {}
    for name in set(sources):
        sel = np.array([s == name for s in sources])
        tag = "lai_source/" + name.replace("/", "_")
        want[tag + "/excluded_frac"] = float((~kept[sel]).mean())
        want[tag + "/mean_value_norm"] = float(values[sel].mean())
        want[tag + "/sequences"] = float(sel.sum())
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    assert source_scalars([], [], []) == {}
    with pytest.raises(ValueError, match="lengths differ"):
        source_scalars(["a"], [1.0, 2.0], [True])


@pytest.mark.parametrize("tied", [True, False])
def test_flops_formula_equals_counted_flops(tied):
    """6 N + 12 L d T per token must equal what torch's FLOP counter measures for a forward and
    backward pass of an eager-attention GPT-2 (all matmuls, full T x T attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied,
                     attn_implementation="eager")
    model = GPT2LMHeadModel(cfg)
    b, t = 2, 16
    ids = torch.randint(0, 96, (b, t))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    assert counter.get_total_flops() == b * t * model_flops_per_token(model, t)
    per_layer = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32      # c_attn, attn c_proj, c_fc, mlp c_proj
    assert matmul_params(model) == 2 * per_layer + 96 * 32   # + LM head, tied or not


def test_mfu():
    assert mfu(1e6, 6e6, peak_tflops=12.0, n_devices=2) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, peak_tflops=0.0)

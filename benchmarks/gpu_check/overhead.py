"""Part 4: LAI overhead through the real trainer, and a bare DeepSpeed loop, at GPT-2-small scale."""
from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.paths import ROOT
from benchmarks.lib.tb import tb_events, wall_tokens_per_s
from benchmarks.gpu_check.report import save
from benchmarks.gpu_check.shared import MODES, child_env, log, peak_tflops, run_config
from pipeline.lai import ScoreSettings


def _tb(run_dir: Path, tag: str) -> list[tuple[int, float, float]]:
    return tb_events(run_dir / "tb", tag)


def _median_after_first(rows) -> float:
    vals = [v for _, _, v in rows[1:]] or [v for _, _, v in rows]
    return float(np.median(vals)) if vals else float("nan")


def trainer_run(args, size, mode: str, batch: int, steps: int, peak: float) -> dict:
    """One real trainer run (`python -m pipeline.train`, its own process: DeepSpeed caches its
    process groups, so a process runs one training); its numbers from its own TensorBoard."""
    run = args.work / "runs" / f"{mode}-b{batch}"
    argv = run_config(args, size, batch, steps) + MODES[mode] + [
        f"run.out_dir={run}", f"log.peak_tflops={peak}"]
    logfile = args.out / f"train-{mode}-b{batch}.log"
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "pipeline.train", *argv], cwd=ROOT,
                            env=child_env(), stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"lai-train {mode} b{batch} exited {rc}: "
                           f"{logfile.read_text()[-300:]}")
    parts = {k: _median_after_first(_tb(run, f"perf_ranks/{k}_max"))
             for k in ("time_data_s", "time_forward_s", "time_lai_s", "time_backward_step_s")}
    step_s = sum(parts.values())
    loss = _tb(run, "train/loss")
    wall_tps = wall_tokens_per_s(run, batch * size["seq_len"])
    row = {"mode": mode, "batch": batch, "steps": steps, "step_s": step_s, **parts,
           "tokens_per_s": _median_after_first(_tb(run, "perf/tokens_per_s")),
           "wall_tokens_per_s": wall_tps, "mfu": _median_after_first(_tb(run, "perf/mfu")),
           "peak_mem_gib": max((v for _, _, v in _tb(run, "perf_ranks/peak_memory_gib_max")),
                               default=float("nan")),
           "lai_share": parts["time_lai_s"] / step_s if step_s else float("nan"),
           "final_loss": loss[-1][2] if loss else float("nan"), "run_seconds": wall}
    log(f"trainer {mode} b{batch}: step {step_s * 1e3:.1f} ms (LAI {parts['time_lai_s'] * 1e3:.1f}"
        f" ms, {row['lai_share']:.1%}), {row['tokens_per_s']:,.0f} tok/s, wall "
        f"{wall_tps:,.0f} tok/s, MFU {row['mfu']:.3f}, peak {row['peak_mem_gib']:.1f} GiB")
    return row


LOOPS = {"bare": "benchmarks.bare_loop", "ref": "benchmarks.ref_loop"}


def loop_run(args, size, mode: str, batch: int, steps: int, peak: float) -> dict:
    """A loop without the trainer on the same model, data and batch, in its own process: `bare`
    (plain DeepSpeed, benchmarks.bare_loop) or `ref` (nanoGPT-class: whole-model torch.compile,
    bf16 autocast, fused AdamW, no DeepSpeed; benchmarks.ref_loop)."""
    cmd = [sys.executable, "-m", LOOPS[mode], *run_config(args, size, batch, steps),
           *MODES["off"], "--steps", str(steps)]
    logfile = args.out / f"{mode}-b{batch}.log"
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=f, text=True)
    if rc.returncode != 0:
        raise RuntimeError(f"{mode} loop b{batch} exited {rc.returncode}: "
                           f"{logfile.read_text()[-300:]}")
    row = json.loads(rc.stdout.strip().splitlines()[-1])
    row["mfu"] = row.pop("tflops") / peak if peak else float("nan")
    log(f"{mode} loop b{batch}: {row['step_s'] * 1e3:.1f} ms/step, "
        f"{row['wall_tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.3f}"
        + ("" if row.get("compiled", True) else " (torch.compile skipped on this device)"))
    return row


def probe_batch(args, size) -> int:
    """The largest micro-batch (multiple of 8, <= max_batch) whose LAI sketch step fits in 85% of
    the device memory, extrapolated from the peak memory of plain training steps at 2 and 4."""
    import torch

    from pipeline.config import load_config
    from pipeline.lai import LAIScorer, LayerInputCapture, per_sequence_loss
    from pipeline.train.model import build_model
    if args.batch or not torch.cuda.is_available():
        return args.batch or size["max_batch"]
    argv = run_config(args, size, 2, 1)
    cfg = load_config(argv[0], argv[1:])
    model = build_model(cfg.model, vocab_size=size["vocab"], seq_len=size["seq_len"])
    model = model.cuda().to(torch.bfloat16)
    scorer = LAIScorer(ScoreSettings(method="sketch", reference="local",
                                     sketch_dim=1 << 18).resolved())
    peaks = {}
    for b in (2, 4):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        x = torch.randint(0, size["vocab"], (b, size["seq_len"] + 1), device="cuda")
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=x[:, :-1]).logits
        losses = per_sequence_loss(logits, x[:, 1:])
        scorer.values(cap.inputs, logits, x[:, 1:])
        del cap, logits
        losses.mean().backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        peaks[b] = torch.cuda.max_memory_allocated()
    per_seq = (peaks[4] - peaks[2]) / 2
    total = torch.cuda.get_device_properties(0).total_memory
    opt_states = sum(p.numel() for p in model.parameters()) * 16    # fp32 master + Adam + grads
    fit = int((0.85 * total - peaks[2] - opt_states) / per_seq) + 2
    del model
    gc.collect()
    torch.cuda.empty_cache()
    batch = max(8, min(size["max_batch"], fit // 8 * 8))
    log(f"probe: {per_seq / 2**30:.2f} GiB per sequence -> micro-batch {batch}")
    return batch


# (numerator, denominator) modes of the throughput ratios (wall tokens/s, same micro-batch)
RATIOS = [("off", "ref"), ("off-compiled", "ref"), ("bare", "ref"), ("off", "bare"),
          ("sketch", "off"), ("sketch", "ref"), ("sketch-compiled", "off-compiled"),
          ("sketch-compiled", "ref"), ("off-fsdp2", "off"), ("sketch-fsdp2", "sketch"),
          ("off-fsdp2", "ref")]


def ratios(rows: list[dict]) -> dict[str, float]:
    """Throughput ratios "A/B@batch" (wall tokens/s of mode A over mode B at the same
    micro-batch), and "lai_share:MODE@batch": an LAI mode's LAI time over the step of LAI off
    with the same compile and backend (off, off-compiled, off-fsdp2)."""
    by = {(r["mode"], r["batch"]): r for r in rows if "error" not in r}
    out = {}
    for batch in sorted({b for _, b in by}):
        for a, b in RATIOS:
            if (a, batch) in by and (b, batch) in by:
                out[f"{a}/{b}@{batch}"] = (by[a, batch]["wall_tokens_per_s"]
                                           / by[b, batch]["wall_tokens_per_s"])
        for (mode, b), r in by.items():
            base = "off" + "".join(s for s in ("-compiled", "-fsdp2") if mode.endswith(s))
            off = by.get((base, batch))
            if b == batch and off and r.get("time_lai_s") and mode.startswith(("sketch", "exact")):
                out[f"lai_share:{mode}@{batch}"] = r["time_lai_s"] / off["step_s"]
    return out


def overhead_part(args, size, res) -> None:
    peak = peak_tflops(res)
    shutil.rmtree(args.work / "runs", ignore_errors=True)      # runs start fresh (resume=never)
    big = probe_batch(args, size)
    res["overhead"] = {"batch": big, "peak_tflops": peak, "rows": []}
    rows = res["overhead"]["rows"]
    plan = []
    for item in args.plan.split(","):
        mode, _, b = item.partition(":")
        if mode not in LOOPS and mode not in MODES:
            raise ValueError(f"--plan: unknown mode {mode!r}")
        batch = big if b == "big" else size["small_batch"] if b == "small" else int(b)
        steps = size["bare_steps"] if mode in LOOPS else \
            size["steps"] if batch == big else size["small_steps"]
        plan.append((mode, batch, steps))
    for mode, batch, steps in plan:
        try:
            rows.append(loop_run(args, size, mode, batch, steps, peak) if mode in LOOPS
                        else trainer_run(args, size, mode, batch, steps, peak))
            save(args, res)
        except Exception as e:    # record and keep going
            rows.append({"mode": mode, "batch": batch, "error": f"{type(e).__name__}: {e}"})
            log(f"{mode} b{batch} failed: {e}")
        res["overhead"]["ratios"] = ratios(rows)
    for key, v in res["overhead"]["ratios"].items():
        log(f"ratio {key}: {v:.3f}")

"""The prepared GPU check: CUDA tests, LAI overhead at GPT-2-small scale, sketch-vs-exact agreement.

    benchmarks/gpu_check.sh                              # on a GPU machine: one command, < 8 min
    .venv/bin/python -m benchmarks.gpu_check --dry      # the same parts at tiny sizes, on CPU

Parts, in order; each is timed, a failing part is recorded and the next one still runs:
1. env: device, driver, torch / CUDA / DeepSpeed / transformers versions;
2. tests: `pytest -m cuda` (tests/test_cuda.py: LAI on CUDA, a ZeRO-2 bf16 step with LAI, resume);
3. data: the stdlib corpus through the real `lai-prep`, GPT-2's vocabulary size (50257);
4. overhead: GPT-2 small (124M parameters, seq 1024, bf16, SDPA attention) through the real
   trainer (`pipeline.train.main`, 1 rank, DeepSpeed ZeRO 1) in this process: LAI off / sketch at
   the largest micro-batch that fits (measured), and off / sketch / exact at micro-batch 8 (exact
   gathers per-token features: B T (D + V) floats); a bare DeepSpeed loop (engine forward,
   token-mean cross-entropy, backward, step) on the same model, data and batch. Per run: tokens/s
   (the trainer's phase timers and wall clock between log lines), MFU against the card's bf16
   dense peak, peak memory, and LAI's share of the step;
5. profile: where the sketch's time goes (forward with / without capture, input side, vocabulary
   side, outer product, an fp32 softmax as the floor; the vocabulary side under torch.compile);
6. fidelity: on the model the sketch run trained, LAI values (token_pair, the batch as reference)
   of the sketch at several sizes and of a bf16 copy against exact fp32: Pearson per batch.
Writes OUT/gpu_check.json, OUT/gpu_check.md (the section for docs/RESULTS.md) and OUT/*.log;
`--doc` also replaces the gpu section of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import common as C

# bf16 dense peak per device for MFU (vendor datasheets); measured matmul ceilings are lower
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "cpu": 0.0}
SIZES = {
    "gpu": {"vocab": 50257, "seq_len": 1024, "model": ("gpt2", 12, 768, 12), "precision": "bf16",
            "steps": 20, "small_steps": 15, "log_every": 5, "small_batch": 8, "max_batch": 64,
            "bare_steps": 20, "fidelity_batches": 4, "fidelity_batch": 16, "sketch_dims": [1 << 16, 1 << 18, 1 << 20]},
    "dry": {"vocab": 512, "seq_len": 64, "model": ("gpt2", 2, 64, 2), "precision": "fp32",
            "steps": 6, "small_steps": 6, "log_every": 2, "small_batch": 4, "max_batch": 8,
            "bare_steps": 4, "fidelity_batches": 2, "fidelity_batch": 4, "sketch_dims": [1 << 12, 1 << 16]},
}
MODES = {"off": ["lai.enabled=false", "lai.filter=none"],
         "sketch": ["lai.enabled=true", "lai.filter=lai", "lai.method=sketch"],
         "exact": ["lai.enabled=true", "lai.filter=lai", "lai.method=exact"],
         "sketch-blocks": ["lai.enabled=true", "lai.filter=lai", "lai.method=sketch",
                           "lai.layers=blocks"]}
for _m in ("off", "sketch-blocks"):
    MODES[f"{_m}-compiled"] = MODES[_m] + ["model.compile=true"]
# (mode, micro-batch: "big" = the probed size, "small" = SIZES' small_batch, or a number)
PLAN = "off:big,sketch:big,bare:big,off:small,sketch:small,exact:small,bare:small"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="tiny sizes on CPU (checks the script)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or C.OUT / "gpu_check"))
    p.add_argument("--work", type=Path, default=None,
                   help="data and run directories (default: a folder under /tmp)")
    p.add_argument("--parts", default="env,tests,data,overhead,profile,fidelity")
    p.add_argument("--batch", type=int, default=0, help="micro-batch of the large runs (0: probe)")
    p.add_argument("--plan", default=PLAN,
                   help=f"overhead runs as MODE:BATCH (modes: bare, {', '.join(MODES)}; batch: "
                        f"big | small | N), in order (default {PLAN})")
    p.add_argument("--doc", action="store_true", help="also update docs/RESULTS.md")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="only rewrite the report (and with --doc the docs) from a results file")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- 1. env

def env_part(args, size, res) -> None:
    import torch
    import transformers
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": sys.version.split()[0],
            "machine": C.machine()}
    try:
        import deepspeed
        info["deepspeed"] = deepspeed.__version__
    except ImportError as e:
        info["deepspeed"] = f"missing: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, memory_gib=p.total_memory / 2**30, sms=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True)
        info["driver"] = smi.stdout.strip()
    else:
        info["device"] = "cpu"
    res["env"] = info
    log(f"env: {info}")


def peak_tflops(res) -> float:
    name = res.get("env", {}).get("device", "cpu")
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)


# --------------------------------------------------------------------------- 2. tests

def tests_part(args, size, res) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           str(C.ROOT / "tests" / "test_cuda.py")]
    p = subprocess.run(cmd, cwd=C.ROOT, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    (args.out / "tests.log").write_text(out)
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line
               or " skipped" in line or " error" in line]
    res["tests"] = {"rc": p.returncode, "summary": summary[-1] if summary else out[-300:]}
    log(f"tests: rc {p.returncode}: {res['tests']['summary']}")


# --------------------------------------------------------------------------- 3. data

def data_part(args, size, res) -> None:
    out = args.work / f"stdlib-v{size['vocab']}"
    cmd = [sys.executable, "-m", "data_prep", "--source", "stdlib", "--out", str(out),
           "--vocab-size", str(size["vocab"]), "--val-fraction", "0.02", "--progress", "0",
           "--workers", str(min(8, os.cpu_count() or 1))]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=C.ROOT, capture_output=True, text=True, timeout=300)
    (args.out / "data.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"lai-prep exited {p.returncode}: {(p.stdout + p.stderr)[-500:]}")
    res["data"] = {"dir": str(out), "seconds": time.perf_counter() - t0,
                   "summary": (p.stdout + p.stderr).strip().splitlines()[-1]}
    log(f"data: {res['data']['summary']}")


# --------------------------------------------------------------------------- 4. overhead

def _config(args, size, batch: int, steps: int) -> list[str]:
    family, n_layer, hidden, n_head = size["model"]
    return [str(C.ROOT / "configs" / "tiny_cpu.yaml"),
            f"data.sources=[{{path: '{args.work / ('stdlib-v' + str(size['vocab']))}', weight: 1.0}}]",
            f"data.seq_len={size['seq_len']}", f"model.family={family}",
            f"model.n_layer={n_layer}", f"model.hidden={hidden}", f"model.n_head={n_head}",
            "model.tie_word_embeddings=true", f"train.micro_batch={batch}", "train.grad_accum=1",
            "train.global_batch=0", f"train.steps={steps}", "train.zero_stage=1",
            f"train.precision={size['precision']}", "train.lr=6e-4", "train.min_lr=6e-5",
            "train.warmup_steps=5", "train.eval_every=0", "run.save_every=0", "run.resume=never",
            "run.keep_checkpoints=1", "lai.warmup_steps=0", "lai.reference=global",
            f"log.every={size['log_every']}", "log.histogram_every=0"]


def _tb(run_dir: Path, tag: str, sub: str = "") -> list[tuple[int, float, float]]:
    return C.tb_events(run_dir / "tb" / sub, tag)


def _median_after_first(rows) -> float:
    vals = [v for _, _, v in rows[1:]] or [v for _, _, v in rows]
    return float(np.median(vals)) if vals else float("nan")


def _fresh_env() -> dict:
    """This environment for a new 1-rank process group (its own rendezvous port)."""
    from pipeline.comm import free_port
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "MASTER_PORT": str(free_port()), "PYTHONPATH": os.pathsep.join(
        [str(C.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def trainer_run(args, size, mode: str, batch: int, steps: int, peak: float) -> dict:
    """One real trainer run (`python -m pipeline.train`, its own process: DeepSpeed caches its
    process groups, so a process runs one training); its numbers from its own TensorBoard."""
    run = args.work / "runs" / f"{mode}-b{batch}"
    argv = _config(args, size, batch, steps) + MODES[mode] + [
        f"run.out_dir={run}", f"log.peak_tflops={peak}"]
    logfile = args.out / f"train-{mode}-b{batch}.log"
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "pipeline.train", *argv], cwd=C.ROOT,
                            env=_fresh_env(), stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"lai-train {mode} b{batch} exited {rc}: "
                           f"{logfile.read_text()[-300:]}")
    parts = {k: _median_after_first(_tb(run, f"perf/{k}", "rank-00000"))
             for k in ("time_data_s", "time_forward_s", "time_lai_s", "time_backward_step_s")}
    step_s = sum(parts.values())
    loss = _tb(run, "train/loss")
    wall_tps = C.wall_tokens_per_s(run, batch * size["seq_len"])
    row = {"mode": mode, "batch": batch, "steps": steps, "step_s": step_s, **parts,
           "tokens_per_s": _median_after_first(_tb(run, "perf/tokens_per_s")),
           "wall_tokens_per_s": wall_tps, "mfu": _median_after_first(_tb(run, "perf/mfu")),
           "peak_mem_gib": max((v for _, _, v in _tb(run, "perf/peak_memory_gib", "rank-00000")),
                               default=float("nan")),
           "lai_share": parts["time_lai_s"] / step_s if step_s else float("nan"),
           "final_loss": loss[-1][2] if loss else float("nan"), "run_seconds": wall}
    log(f"trainer {mode} b{batch}: step {step_s * 1e3:.1f} ms (LAI {parts['time_lai_s'] * 1e3:.1f}"
        f" ms, {row['lai_share']:.1%}), {row['tokens_per_s']:,.0f} tok/s, wall "
        f"{wall_tps:,.0f} tok/s, MFU {row['mfu']:.3f}, peak {row['peak_mem_gib']:.1f} GiB")
    return row


def bare_loop(args, size, batch: int, steps: int, peak: float) -> dict:
    """Plain DeepSpeed training on the same model, data and batch (benchmarks.bare_loop), in its
    own process."""
    cmd = [sys.executable, "-m", "benchmarks.bare_loop", *_config(args, size, batch, steps),
           *MODES["off"], "--steps", str(steps)]
    logfile = args.out / f"bare-b{batch}.log"
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, cwd=C.ROOT, env=_fresh_env(), stdout=subprocess.PIPE,
                            stderr=f, text=True)
    if rc.returncode != 0:
        raise RuntimeError(f"bare loop b{batch} exited {rc.returncode}: "
                           f"{logfile.read_text()[-300:]}")
    row = json.loads(rc.stdout.strip().splitlines()[-1])
    row["mfu"] = row.pop("tflops") / peak if peak else float("nan")
    log(f"bare DeepSpeed b{batch}: {row['step_s'] * 1e3:.1f} ms/step, "
        f"{row['wall_tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.3f}")
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
    argv = _config(args, size, 2, 1)
    cfg = load_config(argv[0], argv[1:])
    model = build_model(cfg.model, vocab_size=size["vocab"], seq_len=size["seq_len"])
    model = model.cuda().to(torch.bfloat16)
    scorer = LAIScorer(method="sketch", reference="local", sketch_dim=1 << 18)
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


def overhead_part(args, size, res) -> None:
    peak = peak_tflops(res)
    shutil.rmtree(args.work / "runs", ignore_errors=True)      # runs start fresh (resume=never)
    big = probe_batch(args, size)
    res["overhead"] = {"batch": big, "peak_tflops": peak, "rows": []}
    rows = res["overhead"]["rows"]
    plan = []
    for item in args.plan.split(","):
        mode, _, b = item.partition(":")
        if mode != "bare" and mode not in MODES:
            raise ValueError(f"--plan: unknown mode {mode!r}")
        batch = big if b == "big" else size["small_batch"] if b == "small" else int(b)
        steps = size["bare_steps"] if mode == "bare" else \
            size["steps"] if batch == big else size["small_steps"]
        plan.append((mode, batch, steps))
    for mode, batch, steps in plan:
        try:
            rows.append(bare_loop(args, size, batch, steps, peak) if mode == "bare"
                        else trainer_run(args, size, mode, batch, steps, peak))
            _save(args, res)
        except Exception as e:    # record and keep going
            rows.append({"mode": mode, "batch": batch, "error": f"{type(e).__name__}: {e}"})
            log(f"{mode} b{batch} failed: {e}")


def _teardown() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- 5. LAI profile

def _timed(fn, reps: int = 5) -> float:
    """Median seconds of fn() over `reps` runs after 2 warm-ups (CUDA events on a GPU)."""
    import torch
    cuda = torch.cuda.is_available()
    times = []
    for i in range(reps + 2):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        if cuda:
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            dt = time.perf_counter() - t0
        if i >= 2:
            times.append(dt)
    return float(np.median(times))


def profile_part(args, size, res) -> None:
    """Where the sketch's time goes, on the GPT-2-small model in bf16 at the overhead part's
    large micro-batch: forward (no grad) with and without capture, the whole `values` call and
    its pieces (input side, vocabulary side, outer product) and a plain fp32 softmax of the
    logits (the memory-bound floor of the vocabulary side); plus the vocabulary side through
    torch.compile, to see what fusing would buy."""
    import torch

    from pipeline.config import load_config
    from pipeline.lai import LAIScorer, LayerInputCapture
    from pipeline.lai import sketch as S
    from pipeline.lai.pairings import PAIRINGS
    from pipeline.train.model import build_model
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b = res.get("overhead", {}).get("batch", size["max_batch"])
    argv = _config(args, size, b, 1)
    model = build_model(load_config(argv[0], argv[1:]).model, vocab_size=size["vocab"],
                        seq_len=size["seq_len"]).to(dev).to(
        torch.bfloat16 if dev == "cuda" else torch.float32).eval()
    x = torch.randint(0, size["vocab"], (b, size["seq_len"] + 1), device=dev)
    ids, tgt = x[:, :-1], x[:, 1:]
    scorer = LAIScorer(method="sketch", reference="local")
    k1, k2 = PAIRINGS["token_pair"].split(scorer.sketch_dim)
    valid = torch.ones_like(tgt, dtype=torch.bool)
    with torch.no_grad():
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=ids).logits
        inputs = cap.inputs
        ca = S.input_side(inputs, 0, k1, torch.float32, None)
        step = S.chunk_size(b, size["seq_len"], size["vocab"], logits.device)

        def vocab(fn=S.vocab_side):
            return [fn(logits[s:s + step], tgt[s:s + step], valid[s:s + step], k2, 0,
                       torch.float32) for s in range(0, b, step)]
        cg = torch.cat(vocab())

        def fwd_capture():
            with LayerInputCapture(model):
                model(input_ids=ids)
        t = {"forward": _timed(lambda: model(input_ids=ids)), "forward_capture": _timed(fwd_capture),
             "values": _timed(lambda: scorer.values(inputs, logits, tgt)),
             "input_side": _timed(lambda: S.input_side(inputs, 0, k1, torch.float32, None)),
             "vocab_side": _timed(vocab),
             "outer_product": _timed(lambda: ca.transpose(1, 2) @ cg),
             "softmax_fp32": _timed(lambda: [torch.softmax(logits[s:s + step], -1,
                                                           dtype=torch.float32)
                                             for s in range(0, b, step)])}
        try:
            compiled = torch.compile(S.vocab_side, dynamic=False)
            t0 = time.perf_counter()
            vocab(compiled)
            t["compile_seconds"] = time.perf_counter() - t0
            t["vocab_side_compiled"] = _timed(lambda: vocab(compiled))
        except Exception as e:   # measured, not assumed: record why it did not work
            t["compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    res["lai_profile"] = {"batch": b, "chunk": step, "k1": k1, "k2": k2,
                          "attn": getattr(model.config, "_attn_implementation", "?"), **t}
    log("profile: " + ", ".join(f"{k} {v * 1e3:.2f} ms" if isinstance(v, float) else f"{k} {v}"
                                for k, v in t.items()))
    del model, logits, inputs, cap, ca, cg
    _teardown()


# --------------------------------------------------------------------------- 6. fidelity

def fidelity_part(args, size, res) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data import PackedDataset
    from pipeline.lai import lai_values
    run = args.work / "runs" / f"sketch-b{res.get('overhead', {}).get('batch', size['max_batch'])}"
    src = run / "final" if (run / "final").is_dir() else None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if src is not None:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    else:                                     # no trained model (overhead part skipped or failed)
        from pipeline.config import load_config
        from pipeline.train.model import build_model
        argv = _config(args, size, 2, 1)
        model = build_model(load_config(argv[0], argv[1:]).model, vocab_size=size["vocab"],
                            seq_len=size["seq_len"])
    model = model.to(dev).eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    data = PackedDataset([(args.work / f"stdlib-v{size['vocab']}", 1.0)], size["seq_len"],
                         split="val", seed=0)
    b = size["fidelity_batch"]
    rows = []
    for k in range(size["fidelity_batches"]):
        ids = torch.from_numpy(np.stack([data.sample(k * b + i) for i in range(b)]))[:, :-1]
        ids = ids.to(dev)
        t0 = time.perf_counter()
        exact = lai_values(model, ids, method="exact")          # (eager: no compile per size)
        t_exact = time.perf_counter() - t0
        row = {"batch": k, "exact_s": t_exact}
        for dim in size["sketch_dims"]:
            sk = lai_values(model, ids, method="sketch", sketch_dim=dim, compile=False)
            row[f"pearson_sketch_{dim}"] = C.pearson(sk.cpu().numpy(), exact.cpu().numpy())
            row[f"spearman_sketch_{dim}"] = C.spearman(sk.cpu().numpy(), exact.cpu().numpy())
        row["pearson_bf16_exact"] = C.pearson(lai_values(bf16, ids, method="exact").cpu().numpy(),
                                              exact.cpu().numpy())
        rows.append(row)
        log(f"fidelity batch {k}: " + ", ".join(f"{key} {v:.4f}" for key, v in row.items()
                                                if key.startswith("pearson")))
    res["fidelity"] = {"model": str(src or "untrained"), "batch": b, "rows": rows}


# --------------------------------------------------------------------------- report

def section(res) -> str:
    e = res.get("env", {})
    L = ["## GPU check", "",
         f"- command: `{res['command']}` ({res['seconds'] / 60:.1f} min); date {res['date']}",
         f"- device: {e.get('device')} ({e.get('memory_gib', 0):.0f} GiB, driver {e.get('driver')}),"
         f" torch {e.get('torch')} CUDA {e.get('cuda')}, DeepSpeed {e.get('deepspeed')}, "
         f"transformers {e.get('transformers')}; {e.get('machine')}"]
    if "tests" in res:
        L.append(f"- CUDA tests (`pytest -m cuda`): {res['tests']['summary']}")
    for name, err in res.get("errors", {}).items():
        L.append(f"- part {name} failed: {err}")
    ov = res.get("overhead")
    if ov:
        L += ["", f"### Overhead (GPT-2 small, seq {res['size']['seq_len']}, "
              f"{res['size']['precision']}, 1 rank, ZeRO 1; MFU against {ov['peak_tflops']:.0f} "
              "TFLOP/s bf16 dense)", "",
              "step = the trainer's phase timers (data + forward + LAI + backward/step), median "
              "over log windows after the first; wall tok/s = tokens between the first and last "
              "log line over their wall time (everything the loop does); bare = a plain DeepSpeed "
              "loop on the same model, data and batch.", ""]
        tab = []
        for r in ov["rows"]:
            if "error" in r:
                tab.append([r["mode"], r["batch"]] + ["error"] * 7)
                continue
            tab.append([r["mode"], r["batch"], r["step_s"] * 1e3, r.get("time_lai_s", 0) * 1e3,
                        r.get("lai_share", 0), r.get("tokens_per_s", float("nan")),
                        r["wall_tokens_per_s"], r["mfu"], r["peak_mem_gib"]])
        L += [C.md_table(["mode", "micro-batch", "step ms", "LAI ms", "LAI share", "tok/s (timers)",
                          "tok/s (wall)", "MFU", "peak GiB"], tab, "{:.3f}"), ""]
        by = {(r["mode"], r["batch"]): r for r in ov["rows"] if "error" not in r}
        for batch in sorted({b for _, b in by}):
            off, bare = by.get(("off", batch)), by.get(("bare", batch))
            if off and bare:
                L.append(f"- micro-batch {batch}: pipeline with LAI off / bare DeepSpeed loop = "
                         f"{off['wall_tokens_per_s'] / bare['wall_tokens_per_s']:.3f} (wall tok/s)")
            sk = by.get(("sketch", batch))
            if off and sk:
                L.append(f"- micro-batch {batch}: sketch LAI time / LAI-off step = "
                         f"{sk['time_lai_s'] / off['step_s']:.3f}; whole step "
                         f"{sk['step_s'] / off['step_s']:.3f}x")
    prof = res.get("lai_profile")
    if prof:
        keys = [k for k, v in prof.items() if isinstance(v, float)]
        L += ["", f"### Where the sketch's time goes (micro-batch {prof['batch']}, no grad, "
              f"attention {prof['attn']}, k1 x k2 = {prof['k1']} x {prof['k2']}, vocabulary chunk "
              f"{prof['chunk']} sequences; ms, median of 5)", "",
              C.md_table(keys, [[prof[k] * (1 if k == "compile_seconds" else 1e3) for k in keys]],
                         "{:.2f}"), ""]
        if "compile_error" in prof:
            L.append(f"- torch.compile of the vocabulary side failed: {prof['compile_error']}")
    fid = res.get("fidelity")
    if fid:
        keys = [k for k in fid["rows"][0] if k.startswith(("pearson", "spearman"))]
        rows = [[r["batch"], r["exact_s"], *[r[k] for k in keys]] for r in fid["rows"]]
        rows.append(["mean", float(np.mean([r["exact_s"] for r in fid["rows"]])),
                     *[float(np.mean([r[k] for r in fid["rows"]])) for k in keys]])
        L += ["", f"### Sketch vs exact (token_pair, the batch of {fid['batch']} as reference, "
              f"model: {Path(fid['model']).parent.name or fid['model']})", "",
              C.md_table(["batch", "exact s", *keys], rows, "{:.4f}"), ""]
    return "\n".join(L)


def _save(args, res) -> None:
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))


def _write_report(args, res) -> int:
    text = section(res)
    (args.out / "gpu_check.md").write_text(text + "\n")
    if args.doc:
        C.update_section(C.ROOT / "docs" / "RESULTS.md", "gpu", text)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    size = SIZES["dry" if args.dry else "gpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path("/tmp") / ("lai-gpu-check-dry" if args.dry else "lai-gpu-check")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report:
        res = json.loads(args.report.read_text())
        return _write_report(args, res)
    res = {"command": " ".join(["python -m benchmarks.gpu_check", *(argv or sys.argv[1:])]),
           "date": C.now(), "size": size, "errors": {}}
    t0 = time.perf_counter()
    parts = {"env": env_part, "tests": tests_part, "data": data_part,
             "overhead": overhead_part, "profile": profile_part, "fidelity": fidelity_part}
    for name in args.parts.split(","):
        t = time.perf_counter()
        try:
            parts[name](args, size, res)
        except Exception as e:
            res["errors"][name] = f"{type(e).__name__}: {e}"
            (args.out / f"error-{name}.log").write_text(traceback.format_exc())
            log(f"part {name} failed: {e}")
            _teardown()
        res.setdefault("part_seconds", {})[name] = time.perf_counter() - t
        res["seconds"] = time.perf_counter() - t0
        _save(args, res)
    _write_report(args, res)
    log(f"done in {res['seconds'] / 60:.1f} min: {len(res['errors'])} part(s) failed; "
        f"results {args.out / 'gpu_check.json'}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

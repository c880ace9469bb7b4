"""train.backend: step time of fsdp2 vs deepspeed at equal settings, through the real trainer.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.backends            # CPU, 2 ranks (gloo)

For each model (llama; "1M": 4 x 128, "8M": 6 x 320), `lai-train` runs once per backend with the
same config (ZeRO 3 layout, fp32, seq 256, micro-batch 4 per rank, LAI on with its defaults),
the two backends alternating so that drift on a shared machine hits both alike. Step time = the
trainer's own per-rank parts (perf/time_*_s: data + forward + LAI + backward/step), median over
the logging windows after the first, slowest rank; tokens/s = perf/tokens_per_s; peak memory =
perf/peak_memory_gib (max RSS on CPU). Ratios fsdp2 / deepspeed per model.
Writes benchmarks/out/backends/results.json and the backends section of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.lib.corpus import prepare_default_corpus
from benchmarks.lib.docs import update_section
from benchmarks.lib.machine import machine, now
from benchmarks.lib.paths import OUT, ROOT
from benchmarks.lib.runs import run_train
from benchmarks.lib.tables import md_table
from benchmarks.lib.tb import step_parts, tb_events

MODELS = {"1M": (4, 128, 4), "8M": (6, 320, 5)}
BACKENDS = {"deepspeed": ["train.backend=deepspeed"], "fsdp2": ["train.backend=fsdp2"]}
SEQ, MICRO, STEPS, EVERY, VOCAB = 256, 4, 16, 4, 2048


def _config(out: Path, data_dir: Path, name: str) -> Path:
    n_layer, hidden, n_head = MODELS[name]
    cfg = {"run": {"seed": 0, "resume": "never", "save_every": 0},
           "data": {"sources": [{"path": str(data_dir), "weight": 1.0}], "seq_len": SEQ},
           "model": {"family": "llama", "n_layer": n_layer, "hidden": hidden, "n_head": n_head},
           "train": {"steps": STEPS, "micro_batch": MICRO, "zero_stage": 3, "precision": "fp32",
                     "eval_every": 0, "warmup_steps": 2},
           "lai": {"warmup_steps": 0}, "log": {"every": EVERY, "histogram_every": 0}}
    path = out / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _row(run_dir: Path, name: str, backend: str) -> dict:
    tb = run_dir / "tb"
    tps = [v for _, _, v in tb_events(tb, "perf/tokens_per_s")][1:]
    mem = [v for _, _, v in tb_events(tb, "perf_ranks/peak_memory_gib_max")]
    return {"model": name, "backend": backend, "step_s": sum(step_parts(tb).values()),
            "tokens_per_s": float(np.median(tps)) if tps else float("nan"),
            "peak_mem_gib": float(max(mem)) if mem else float("nan")}


def measure(out: Path, nproc: int) -> list[dict]:
    data_dir = prepare_default_corpus(OUT / "data" / f"stdlib-v{VOCAB}", VOCAB)
    rows = []
    for name in MODELS:
        config = _config(out, data_dir, name)
        for backend, overrides in BACKENDS.items():
            run_dir = out / name / backend
            run_train(config, run_dir, 0, overrides, nproc)
            rows.append(_row(run_dir, name, backend))
            r = rows[-1]
            print(f"backends {name} {backend}: step {r['step_s'] * 1e3:.0f} ms, "
                  f"{r['tokens_per_s']:.0f} tok/s, {r['peak_mem_gib']:.2f} GiB", flush=True)
    return rows


def write_doc(rows: list[dict], meta: dict) -> None:
    by = {(r["model"], r["backend"]): r for r in rows}
    table = [(m, b, r["step_s"] * 1e3, r["step_s"] / by[(m, "deepspeed")]["step_s"],
              r["tokens_per_s"], r["peak_mem_gib"]) for (m, b), r in by.items()]
    text = "\n".join([
        "## Backends: fsdp2 vs deepspeed",
        "",
        f"- command: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.backends` "
        f"({meta['seconds'] / 60:.1f} min)",
        f"- date: {meta['date']}; machine: {meta['machine']} (shared with other jobs while it "
        "ran: read the ratios, measured side by side)",
        f"- `lai-train`, {meta['nproc']} ranks over gloo, ZeRO 3 layout (fsdp2: fully_shard per "
        f"block, reshard_after_forward=True), fp32, seq {SEQ}, micro-batch {MICRO} per rank, "
        f"{STEPS} steps, vocab {VOCAB}, LAI on (defaults); step = data + forward + LAI + "
        "backward/step, median over the logging windows after the first, slowest rank",
        "",
        md_table(["model", "backend", "step ms", "step ratio", "tokens/s", "peak mem GiB"],
                 table, "{:.2f}"),
    ])
    update_section(ROOT / "docs" / "RESULTS.md", "backends", text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends",
                                description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT / "backends")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = measure(args.out, args.nproc)
    meta = {"date": now(), "machine": machine(), "nproc": args.nproc,
            "seconds": time.perf_counter() - t0}
    (args.out / "results.json").write_text(json.dumps({"rows": rows, **meta}, indent=1))
    if not args.no_doc:
        write_doc(rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

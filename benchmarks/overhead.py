"""LAI overhead: step time, tokens/s and peak memory with LAI off / sketch / exact, side by side.

One command:

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.overhead            # CPU sizes, 2 ranks
    .venv/bin/python -m benchmarks.overhead --size gpu --nproc 1         # on a GPU machine

Three parts, each reported as ratios to LAI off on the same machine:
1. trainer: the real `lai-train` (DeepSpeed, torchrun, gloo on CPU) for three model sizes x
   {off, sketch, exact} (default pairing, global reference); step time = the trainer's own
   step-time parts of the slowest rank (TensorBoard perf_ranks/time_*_s_max) after the first
   logging window, tokens/s = perf/tokens_per_s and by the wall clock between log lines, peak
   memory = perf_ranks/peak_memory_gib_max
   (max RSS on CPU, max allocated on CUDA); and a bare DeepSpeed loop on the same config
   (benchmarks.bare_loop) as the reference for the pipeline's own overhead;
2. scaling: in one process, the training step with LAI vs without while sequence length, batch
   size and vocabulary size grow (benchmarks.lib.timing.lai_step_timings);
3. communication: bytes each rank hands to collectives during one `LAIScorer.values` call with
   the global reference, counted on a real 2-rank gloo group, per pairing and method.
Writes docs/results/overhead-<size>.json and the overhead section of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
from benchmarks.lib.tb import step_parts, tb_events, wall_tokens_per_s
from benchmarks.lib.timing import lai_step_timings
from pipeline.lai import ScoreSettings

PAIRINGS = ("token_pair", "aligned", "pooled")
MODES = {"off": ["lai.enabled=false", "lai.filter.kind=none"],
         "sketch": ["lai.enabled=true", "lai.filter.kind=lai", "lai.score.method=sketch", "lai.score.reference=global"],
         "exact": ["lai.enabled=true", "lai.filter.kind=lai", "lai.score.method=exact", "lai.score.reference=global"]}
SIZES = {
    "cpu": {"vocab": 2048, "seq_len": 256, "micro_batch": 4, "steps": 16, "log_every": 4,
            "models": {"tiny": (2, 64, 2), "small": (4, 128, 4), "10M": (6, 320, 5)},
            "scaling": {"model": (2, 128, 4), "seq": [64, 128, 256, 512], "batch": [4, 8, 16, 32],
                        "vocab": [1024, 4096, 16384], "base": (128, 8, 2048)}},
    "gpu": {"vocab": 32768, "seq_len": 1024, "micro_batch": 8, "steps": 30, "log_every": 10,
            "models": {"gpt2-small": (12, 768, 12), "350M": (24, 1024, 16), "1B": (16, 2048, 16)},
            "scaling": {"model": (12, 768, 12), "seq": [256, 512, 1024, 2048], "batch": [2, 4, 8, 16],
                        "vocab": [8192, 32768, 65536], "base": (1024, 8, 32768)}},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead",
                                description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--parts", default="trainer,scaling,comm")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (best of) in the scaling part")
    p.add_argument("--out", type=Path, default=OUT / "overhead")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the docs from the last results file (benchmarks/out/overhead/) without measuring")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- 1. trainer


def trainer_part(args, size, data_dir: Path) -> list[dict]:
    out = args.out / args.size
    rows = []
    for name, (n_layer, hidden, n_head) in size["models"].items():
        cfg = {"run": {"seed": 0, "resume": "never", "save_every": 0},
               "data": {"sources": [{"path": str(data_dir), "weight": 1.0}], "seq_len": size["seq_len"]},
               "model": {"family": "llama", "n_layer": n_layer, "hidden": hidden, "n_head": n_head},
               "train": {"steps": size["steps"], "micro_batch": size["micro_batch"], "zero_stage": 0,
                         "precision": "fp32" if args.size == "cpu" else "bf16", "eval_every": 0,
                         "warmup_steps": 2},
               "lai": {"warmup_steps": 0}, "log": {"every": size["log_every"], "histogram_every": 0}}
        config = out / f"{name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tokens = size["micro_batch"] * args.nproc * size["seq_len"]
        for mode, ov in MODES.items():
            run_dir = out / name / mode
            wall = run_train(config, run_dir, 0, ov, args.nproc)["wall_s"]
            tb = run_dir / "tb"
            parts = step_parts(tb)                            # the slowest rank's, per window
            tps = [v for _, _, v in tb_events(tb, "perf/tokens_per_s")]
            mem = [v for _, _, v in tb_events(tb, "perf_ranks/peak_memory_gib_max")]
            rows.append({"model": name, "params_M": _params_from_log(run_dir), "mode": mode,
                         "step_s": sum(parts.values()), **parts,
                         "tokens_per_s": float(np.median(tps[1:])) if len(tps) > 1 else float("nan"),
                         "wall_tokens_per_s": wall_tokens_per_s(run_dir, tokens),
                         "peak_mem_gib": float(max(mem)), "wall_s": wall})
            print(f"overhead {name} {mode}: step {rows[-1]['step_s'] * 1e3:.0f} ms, "
                  f"{rows[-1]['tokens_per_s']:.0f} tok/s, {rows[-1]['peak_mem_gib']:.2f} GiB", flush=True)
        rows.append(bare_row(args, config, name, size, data_dir))
    return rows


def bare_row(args, config: Path, name: str, size, data_dir: Path) -> dict:
    """benchmarks.bare_loop on the same config (model, data, batch, ranks) as the trainer runs."""
    from pipeline.comm import free_port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", str(free_port()), "-m", "benchmarks.bare_loop", str(config),
           "lai.enabled=false", "lai.filter.kind=none", "--steps", str(size["steps"])]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if p.returncode != 0:
        raise SystemExit(f"error: bare loop for {name} exited {p.returncode}: {p.stderr[-500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"overhead {name} bare: {r['step_s'] * 1e3:.0f} ms/step, {r['wall_tokens_per_s']:.0f} tok/s",
          flush=True)
    return {"model": name, "mode": "bare", "step_s": r["step_s"],
            "wall_tokens_per_s": r["wall_tokens_per_s"]}


def _params_from_log(run_dir: Path) -> float:
    log = run_dir.parent / f"{run_dir.name}.log"
    for line in log.read_text().splitlines() if log.is_file() else ():
        if "M params" in line:
            try:
                return float(line.split("M params")[0].split()[-1])
            except ValueError:
                pass
    return float("nan")


# --------------------------------------------------------------------------- 2. scaling


def scaling_part(args, size) -> list[dict]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from pipeline.lai import DEFAULT_PAIRING, LAIScorer
    sc = size["scaling"]
    n_layer, hidden, n_head = sc["model"]
    t0, b0, v0 = sc["base"]
    grid = ([("seq_len", t, b0, v0) for t in sc["seq"]] + [("batch", t0, b, v0) for b in sc["batch"]]
            + [("vocab", t0, b0, v) for v in sc["vocab"]])
    rows = []
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for axis, t, b, v in grid:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=hidden, intermediate_size=4 * hidden,
                                             num_hidden_layers=n_layer, num_attention_heads=n_head,
                                             max_position_embeddings=t + 1)).to(dev)
        x = torch.randint(4, v, (b, t + 1), device=dev)
        scorers = {m: LAIScorer(ScoreSettings(pairing=DEFAULT_PAIRING, method=m,
                                              reference="global").resolved()) for m in ("sketch",
                                                                                        "exact")}
        best = lai_step_timings(model, x, scorers, rounds=args.rounds)
        rows.append({"axis": axis, "seq_len": t, "batch": b, "vocab": v, "plain_s": best["plain"],
                     **{f"{m}_ratio": best[m] / best["plain"] for m in scorers}})
        print(f"scaling {axis}: T={t} B={b} V={v}: sketch x{rows[-1]['sketch_ratio']:.2f} "
              f"exact x{rows[-1]['exact_ratio']:.2f}", flush=True)
        del model
    return rows


# --------------------------------------------------------------------------- 3. communication


def _comm_worker(rank: int, world: int, port: int, spec: dict, q) -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM
    from pipeline.lai import LAIScorer, LayerInputCapture
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sent = {"bytes": 0}

    def counting(fn, arg):
        def wrapped(*a, **k):
            t = a[arg] if len(a) > arg else k.get("tensor")
            sent["bytes"] += t.numel() * t.element_size()
            return fn(*a, **k)
        return wrapped
    # every rank's contribution to each collective (all_gather: its input; all_reduce: its tensor)
    dist.all_gather = counting(dist.all_gather, 1)
    dist.all_reduce = counting(dist.all_reduce, 0)
    torch.manual_seed(0)
    n_layer, hidden, n_head = spec["model"]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=spec["vocab"], hidden_size=hidden,
                                         intermediate_size=4 * hidden, num_hidden_layers=n_layer,
                                         num_attention_heads=n_head,
                                         max_position_embeddings=spec["seq_len"] + 1))
    torch.manual_seed(1 + rank)
    x = torch.randint(4, spec["vocab"], (spec["batch"], spec["seq_len"] + 1))
    out = []
    for pairing in PAIRINGS:
        for method in ("exact", "sketch"):
            scorer = LAIScorer(ScoreSettings(pairing=pairing, method=method,
                                             reference="global").resolved())
            with torch.no_grad(), LayerInputCapture(model) as cap:
                logits = model(input_ids=x[:, :-1]).logits
            sent["bytes"] = 0
            scorer.values(cap.inputs, logits, x[:, 1:])
            out.append((pairing, method, sent["bytes"]))
    if rank == 0:
        q.put(out)
    dist.barrier()
    dist.destroy_process_group()


def comm_part(args, size) -> list[dict]:
    import torch.multiprocessing as mp
    from pipeline.comm import free_port
    spec = {"model": size["models"][list(size["models"])[-1]], "vocab": size["vocab"],
            "seq_len": size["seq_len"], "batch": size["micro_batch"]}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_comm_worker, args=(r, 2, port, spec, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = q.get(timeout=600)
    for p in procs:
        p.join()
    rows = [{"pairing": p, "method": m, "bytes_per_rank": b, **{k: v for k, v in spec.items() if k != "model"},
             "model": list(size["models"])[-1]} for p, m, b in res]
    for r in rows:
        print(f"comm {r['pairing']} {r['method']}: {r['bytes_per_rank'] / 2**20:.2f} MiB per rank per step", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def section(args, size, trainer, scaling, comm, seconds) -> str:
    from pipeline.lai import DEFAULT_PAIRING, DEFAULT_SKETCH_DIM
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.overhead " + " ".join(
        a for a in sys.argv[1:] if a != "--report-only")
    L = ["## Overhead", "",
         f"- command: `{cmd.strip()}` ({seconds / 60:.1f} min)",
         f"- date: {now()}; machine: {machine()} (shared with other jobs while it ran: "
         "absolute times are noisy, ratios measured side by side)",
         f"- LAI: default pairing `{DEFAULT_PAIRING}`, global reference, sketch size {DEFAULT_SKETCH_DIM}, "
         "layer set linear", ""]
    if trainer:
        L += [f"### Trainer (`lai-train`, {args.nproc} ranks, seq {size['seq_len']}, micro-batch "
              f"{size['micro_batch']} per rank, {size['steps']} steps, vocab {size['vocab']})", "",
              "step = data + forward + LAI + backward/step, median over logging windows after the first, "
              "slowest rank; ratios to LAI off of the same model. `LAI / step off` = the trainer's own "
              "LAI time (perf/time_lai_s) over the LAI-off step: the least noisy overhead estimate on a "
              "shared machine, where whole-step times of separate runs drift by +-20%.", ""]
        base = {r["model"]: r for r in trainer if r["mode"] == "off"}
        bare = {r["model"]: r for r in trainer if r["mode"] == "bare"}
        tab = []
        for r in trainer:
            if r["mode"] == "bare":
                continue
            b = base[r["model"]]
            tab.append([r["model"], r["params_M"], r["mode"], r["step_s"] * 1e3, r["step_s"] / b["step_s"],
                        r["time_lai_s"] * 1e3, r["time_lai_s"] / b["step_s"], r["tokens_per_s"],
                        r["tokens_per_s"] / b["tokens_per_s"], r.get("wall_tokens_per_s", float("nan")),
                        r["peak_mem_gib"], r["peak_mem_gib"] / b["peak_mem_gib"]])
        L += [md_table(["model", "params (M)", "LAI", "step ms", "step ratio", "LAI ms", "LAI / step off",
                        "tokens/s", "tokens/s ratio", "wall tokens/s", "peak mem GiB", "mem ratio"],
                       tab, "{:.2f}"), ""]
        if bare:
            L += ["Pipeline with LAI off against a bare DeepSpeed loop (`benchmarks.bare_loop`: the same "
                  "model, data, batch, ranks and DeepSpeed JSON; engine forward, loss, backward, step and "
                  "nothing else), wall-clock tokens/s:", "",
                  md_table(["model", "bare tokens/s", "pipeline (LAI off) tokens/s", "ratio"],
                           [[m, bare[m]["wall_tokens_per_s"], base[m]["wall_tokens_per_s"],
                             base[m]["wall_tokens_per_s"] / bare[m]["wall_tokens_per_s"]]
                            for m in bare if m in base], "{:.2f}"), ""]
    if scaling:
        m = size["scaling"]["model"]
        L += [f"### Growth with sequence length, batch and vocabulary (one process, llama {m[0]} layers, "
              f"hidden {m[1]})", "", "ratio = training step with LAI / without (best of "
              f"{args.rounds} rounds, interleaved).", ""]
        L += [md_table(["varied", "seq len", "batch", "vocab", "plain step ms", "sketch ratio", "exact ratio"],
                       [[r["axis"], r["seq_len"], r["batch"], r["vocab"], r["plain_s"] * 1e3,
                         r["sketch_ratio"], r["exact_ratio"]] for r in scaling], "{:.2f}"), ""]
    if comm:
        c0 = comm[0]
        L += [f"### Communication per step per rank (2 ranks over gloo, model {c0['model']}, batch "
              f"{c0['batch']} x seq {c0['seq_len']} per rank, vocab {c0['vocab']})", "",
              "bytes each rank hands to all_gather / all_reduce during one `LAIScorer.values` call "
              "(global reference).", ""]
        L += [md_table(["pairing", "method", "MiB per rank per step"],
                       [[r["pairing"], r["method"], r["bytes_per_rank"] / 2**20] for r in comm], "{:.3f}"), ""]
    return "\n".join(L)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    size = SIZES[args.size]
    if args.report_only:
        saved = json.loads((args.out / f"overhead-{args.size}.json").read_text())
        update_section(ROOT / "docs" / "RESULTS.md", "overhead",
                       section(args, size, saved["trainer"], saved["scaling"], saved["comm"], saved["seconds"]))
        return 0
    parts = set(args.parts.split(","))
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data_dir = prepare_default_corpus(OUT / "data" / f"stdlib-v{size['vocab']}", size["vocab"])
    trainer = trainer_part(args, size, data_dir) if "trainer" in parts else []
    scaling = scaling_part(args, size) if "scaling" in parts else []
    comm = comm_part(args, size) if "comm" in parts else []
    seconds = time.perf_counter() - t0
    payload = {"size": args.size, "trainer": trainer, "scaling": scaling, "comm": comm,
               "date": now(), "machine": machine(), "seconds": seconds}
    from pipeline.fsutil import atomic_write_json
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"overhead-{args.size}.json", payload)
    if not args.no_doc:
        atomic_write_json(ROOT / "docs" / "results" / f"overhead-{args.size}.json", payload)
        update_section(ROOT / "docs" / "RESULTS.md", "overhead",
                       section(args, size, trainer, scaling, comm, seconds))
    print(f"overhead: {len(trainer)} trainer runs, {len(scaling)} scaling points, {len(comm)} comm rows "
          f"in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parts 1-3: the machine and its software, the CUDA tests, the data through `lai-prep`."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.lib.machine import machine
from benchmarks.lib.paths import ROOT
from benchmarks.gpu_check.shared import log


def env_part(args, size, res) -> None:
    import torch
    import transformers
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": sys.version.split()[0],
            "machine": machine()}
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


def tests_part(args, size, res) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "e2e" / "test_cuda.py")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    (args.out / "tests.log").write_text(out)
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line
               or " skipped" in line or " error" in line]
    res["tests"] = {"rc": p.returncode, "summary": summary[-1] if summary else out[-300:]}
    log(f"tests: rc {p.returncode}: {res['tests']['summary']}")


def data_part(args, size, res) -> None:
    out = args.work / f"stdlib-v{size['vocab']}"
    cmd = [sys.executable, "-m", "data_prep", "--source", "stdlib", "--out", str(out),
           "--vocab-size", str(size["vocab"]), "--val-fraction", "0.02", "--progress", "0",
           "--workers", str(min(8, os.cpu_count() or 1))]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    (args.out / "data.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"lai-prep exited {p.returncode}: {(p.stdout + p.stderr)[-500:]}")
    res["data"] = {"dir": str(out), "seconds": time.perf_counter() - t0,
                   "summary": (p.stdout + p.stderr).strip().splitlines()[-1]}
    log(f"data: {res['data']['summary']}")

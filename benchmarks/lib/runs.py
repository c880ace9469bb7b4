"""Trainer runs of the benchmarks: `python -m pipeline.train` as a subprocess, timed, resumable."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from benchmarks.lib.paths import ROOT


def run_train(config: Path, run_dir: Path, seed: int, overrides: Sequence[str], nproc: int) -> dict:
    """One trainer run (`python -m pipeline.train`): torchrun with `nproc` ranks (gloo on CPU), or
    a plain process when nproc is 1 (world of one). Skipped if RUN/final exists. Returns
    {"wall_s", "cpu_s"}: wall and CPU seconds of the launcher and everything it waited for,
    recorded in RUN.time.json next to the run with the trainer arguments and the config's
    fingerprint it ran with (a skipped run reports its earlier times; SystemExit if it ran with
    other arguments or another config, so a changed variant or scenario never reuses a stale
    run). Output goes to RUN.log next to the run; several runs may go at once (each rendezvous
    takes a free port)."""
    import json
    from pipeline.comm import free_port
    from pipeline.config.moved import migrate_overrides
    timing = run_dir.parent / f"{run_dir.name}.time.json"
    args = [str(config), f"run.out_dir={run_dir}", f"run.seed={seed}", *overrides]
    sha = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    if (run_dir / "final").exists():
        done = json.loads(timing.read_text()) if timing.is_file() else \
            {"wall_s": float("nan"), "cpu_s": float("nan")}
        if "args" in done:                     # recorded before the lai blocks: the same run
            done["args"] = migrate_overrides(done["args"])
        if done.get("args", args) != args:
            changed = [a for a in done["args"] if a not in args]
            raise SystemExit(f"error: {run_dir}: finished with other trainer arguments (then "
                             f"{' '.join(changed) or '-'}; now "
                             f"{' '.join(a for a in args if a not in done['args']) or '-'}); "
                             "delete it or choose another output folder")
        if done.get("config_sha256") != sha:
            raise SystemExit(f"error: {run_dir}: finished with another {config} (or before its "
                             "fingerprint was recorded); delete it or choose another output folder")
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    launch = ["-m", "pipeline.train"] if nproc == 1 else \
        ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
         str(free_port()), "-m", "pipeline.train"]
    cmd = [sys.executable, *launch, *args]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log_path = run_dir.parent / f"{run_dir.name}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("+ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: {run_dir}: the trainer exited {proc.returncode}; see {log_path}")
    out = {"wall_s": round(time.perf_counter() - t0, 1),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "args": args,
           "config_sha256": sha}
    timing.write_text(json.dumps(out) + "\n")
    return out

"""`python -m benchmarks.gpu_check` (usually through gpu_check.sh): every part in order."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.lib.machine import now
from benchmarks.lib.paths import OUT
from benchmarks import gpu_check
from benchmarks.gpu_check.env import data_part, env_part, tests_part
from benchmarks.gpu_check.headroom_scenario import headroom_part
from benchmarks.gpu_check.lai_profile import profile_part
from benchmarks.gpu_check.overhead import overhead_part
from benchmarks.gpu_check.report import save, write_report
from benchmarks.gpu_check.shared import MODES, PLAN, SIZES, log, teardown
from benchmarks.gpu_check.sketch_fidelity import fidelity_part


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                description=gpu_check.__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="tiny sizes on CPU (checks the script)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or OUT / "gpu_check"))
    p.add_argument("--work", type=Path, default=None,
                   help="data and run directories (default: a folder under /tmp)")
    p.add_argument("--parts", default="env,tests,data,overhead,profile,headroom",
                   help="comma list of env, tests, data, overhead, profile, fidelity, headroom "
                        "(default: all but fidelity, to fit one 10-minute call)")
    p.add_argument("--batch", type=int, default=0, help="micro-batch of the large runs (0: probe)")
    p.add_argument("--plan", default=PLAN,
                   help=f"overhead runs as MODE:BATCH (modes: ref, bare, {', '.join(MODES)}; batch: "
                        f"big | small | N), in order (default {PLAN})")
    p.add_argument("--doc", action="store_true", help="also update docs/RESULTS.md")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="only rewrite the report (and with --doc the docs) from a results file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = SIZES["dry" if args.dry else "gpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path("/tmp") / ("lai-gpu-check-dry" if args.dry else "lai-gpu-check")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report:
        res = json.loads(args.report.read_text())
        return write_report(args, res)
    res = {"command": " ".join(["python -m benchmarks.gpu_check", *(argv or sys.argv[1:])]),
           "date": now(), "size": size, "errors": {}}
    t0 = time.perf_counter()
    parts = {"env": env_part, "tests": tests_part, "data": data_part,
             "overhead": overhead_part, "profile": profile_part, "fidelity": fidelity_part,
             "headroom": headroom_part}
    for name in args.parts.split(","):
        t = time.perf_counter()
        try:
            parts[name](args, size, res)
        except Exception as e:
            res["errors"][name] = f"{type(e).__name__}: {e}"
            (args.out / f"error-{name}.log").write_text(traceback.format_exc())
            log(f"part {name} failed: {e}")
            teardown()
        res.setdefault("part_seconds", {})[name] = time.perf_counter() - t
        res["seconds"] = time.perf_counter() - t0
        save(args, res)
    write_report(args, res)
    log(f"done in {res['seconds'] / 60:.1f} min: {len(res['errors'])} part(s) failed; "
        f"results {args.out / 'gpu_check.json'}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

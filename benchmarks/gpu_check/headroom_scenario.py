"""Part 7: one headroom scenario at GPU size (benchmarks.headroom: none / oracle / the shipped
default / mixing, 1 seed), sized to fit the device call with the rest of the check."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from benchmarks.lib.paths import ROOT
from benchmarks.gpu_check.shared import child_env, log


def headroom_part(args, size, res) -> None:
    """`python -m benchmarks.headroom` on the size's scenario (its runs at once on the one
    device, `jobs`), its summary into res["headroom"] and OUT/headroom.json. The runs start fresh
    every time (never reused from an earlier check); the prepared data is reused."""
    h = size["headroom"]
    out = args.work / "headroom"                # its prepared data (out/data) is kept
    runs = out / f"{h['size']}-steps{h['steps']}"
    shutil.rmtree(runs, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks.headroom", "--size", h["size"], "--scenarios",
           h["scenario"], "--variants", ",".join(h["variants"]), "--seeds", "0", "--steps",
           str(h["steps"]), "--jobs", str(h["jobs"]), "--out", str(out), "--no-doc",
           *[a for k, v in h["scale"].items() for a in ("--scale", f"{k}={v}")]]
    t0 = time.perf_counter()
    with open(args.out / "headroom.log", "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"benchmarks.headroom exited {rc}: "
                           f"{(args.out / 'headroom.log').read_text()[-300:]}")
    shutil.copy(runs / "headroom.json", args.out / "headroom.json")
    payload = json.loads((runs / "headroom.json").read_text())
    sc = payload["scenarios"][h["scenario"]]
    res["headroom"] = {"command": " ".join(cmd[1:]), "seconds": time.perf_counter() - t0,
                       "scenario": h["scenario"], "line": payload["meta"]["line"],
                       "data": sc["info"]["data"], "headroom": sc["headroom"], "rows": sc["rows"]}
    for r in sc["rows"]:
        log(f"headroom {h['scenario']} {r['variant']}: val {r['final']:.4f} "
            f"(minus none {r['delta']:+.4f}), excluded {r['excluded']:.3f}")

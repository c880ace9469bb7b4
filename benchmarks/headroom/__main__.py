"""`python -m benchmarks.headroom`: the command (usage in the package docstring)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.machine import machine, now
from benchmarks.lib.docs import portable_command
from benchmarks.lib.paths import OUT, ROOT
from benchmarks import headroom
from benchmarks.headroom import report, runs
from benchmarks.headroom.analysis import summarise
from benchmarks.headroom.scenarios import SCENARIOS, SIZES, Scenario, with_steps
from benchmarks.headroom.variants import (LEVERS, RATE_FROM, REFERENCES, SUITE, VARIANTS,
                                          needs_rate)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.headroom",
                                description=" ".join(headroom.__doc__.split("\n\n")[0].split()))
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--scenarios", default="all", help=f"comma list of {', '.join(SCENARIOS)}, or all")
    p.add_argument("--variants", default="suite",
                   help=f"comma list of variant names; suite ({', '.join(SUITE)}); or all (the "
                        f"suite and {', '.join(LEVERS)}); none and oracle always run")
    p.add_argument("--add", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="an extra variant: NAME=space-separated dotted overrides (repeatable)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: the size's)")
    p.add_argument("--nproc", type=int, default=None, help="ranks per run (default: the size's)")
    p.add_argument("--steps", type=int, default=None,
                   help="override the size's steps, scaling its warmups and eval cadence alike "
                        "(runs go to OUT/SIZE-stepsN; for sizing and smoke runs)")
    p.add_argument("--scale", action="append", default=[], metavar="KEY=N",
                   help="override a corpus size of the size's scale (for sizing; data prepared "
                        "from other documents is refused, so give it its own --out)")
    p.add_argument("--out", type=Path, default=OUT / "headroom")
    p.add_argument("--no-doc", action="store_true", help="do not touch docs/")
    return p.parse_args(argv)


def select(args) -> tuple[list[Scenario], dict[str, list[str]], list[str]]:
    scen = list(SCENARIOS.values()) if args.scenarios == "all" else []
    for n in ([] if args.scenarios == "all" else args.scenarios.split(",")):
        if n not in SCENARIOS:
            raise SystemExit(f"error: --scenarios: unknown {n!r} (choose from {', '.join(SCENARIOS)})")
        scen.append(SCENARIOS[n])
    variants = dict(VARIANTS)
    for spec in args.add:
        name, sep, ov = spec.partition("=")
        if not sep or not name or not ov.strip():
            raise SystemExit(f"error: --add {spec!r}: expected NAME=dotted.key=value ...")
        variants[name.strip()] = shlex.split(ov)
    chosen = {"suite": list(SUITE), "all": list(VARIANTS)}.get(args.variants)
    names = chosen or [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"error: --variants: unknown {unknown} (choose from suite, all, "
                         f"{', '.join(variants)})")
    names += [a.partition("=")[0].strip() for a in args.add]
    names = list(REFERENCES) + [n for n in dict.fromkeys(names) if n not in REFERENCES]
    if any(needs_rate(variants[n]) for n in names) and RATE_FROM not in names:
        names.append(RATE_FROM)
    return scen, variants, names


def sized(args) -> dict:
    """The size's settings with --steps (warmups and eval cadence scaled alike) and --scale."""
    size = dict(SIZES[args.size])
    if args.steps:
        if args.steps < 2:
            raise SystemExit(f"error: --steps {args.steps}: at least 2")
        size = with_steps(size, args.steps)
    size["scale"] = dict(size["scale"])
    for kv in args.scale:
        key, _, v = kv.partition("=")
        if key not in size["scale"] or not v.isdigit():
            raise SystemExit(f"error: --scale {kv!r}: expected KEY=N with KEY one of "
                             f"{', '.join(size['scale'])}")
        size["scale"][key] = int(v)
    return size


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    size = sized(args)
    jobs, nproc = args.jobs or size["jobs"], args.nproc or size["nproc"]
    seeds = [int(s) for s in args.seeds.split(",")]
    scen, variants, names = select(args)
    out = args.out / (args.size if not args.steps else f"{args.size}-steps{args.steps}")
    plans = {sc.name: runs.plan(sc, size, nproc, args.out / "data" / args.size, out) for sc in scen}
    results, rates, timings, grids = runs.run_all(plans, names, variants, seeds, out, jobs, nproc)

    per = {}
    for sc in scen:
        res = {n: dict(sorted(results[sc.name][n].items())) for n in names if n in results[sc.name]}
        rows, head = summarise(res, sc.oracle)
        per[sc.name] = {"rows": rows, "headroom": head, "rate": rates[sc.name], "runs": res,
                        "info": plans[sc.name].info, "grid": grids.get(sc.name)}
        print(report.console(sc, rows, head))
    seconds = time.perf_counter() - t0
    wall = float(np.nansum([t["wall_s"] for t in timings]))
    cpu = float(np.nansum([t["cpu_s"] for t in timings]))
    cmd = portable_command("benchmarks.headroom", sys.argv[1:])
    meta = {"line": (f"Size `{args.size}`: llama {size['n_layer']} layers x {size['hidden']}, seq "
                     f"{size['seq_len']}, global batch {size['global_batch']}, {size['steps']} steps, lr "
                     f"{size['lr']} cosine; seeds {args.seeds}; {nproc} process(es) per run, {jobs} "
                     f"runs at once; machine: {machine()}; {now()}."),
            "command": cmd.strip(), "seconds": seconds, "runs": len(timings),
            "run_wall_s": wall, "run_cpu_s": cpu}
    payload = {"size": size, "seeds": seeds, "meta": meta, "scenarios": per}
    report.write_json(out / "headroom.json", payload)
    if not args.no_doc:
        report.write_docs(ROOT / "docs", args.size, scen, payload)
    print(f"headroom: {len(scen)} scenario(s) x {len(names)} variants x {len(seeds)} seeds in "
          f"{seconds / 60:.1f} min ({cpu / 60:.1f} CPU min in the runs) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

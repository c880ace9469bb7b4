"""From a scenario to finished trainer runs: its sources through `lai-prep`, the base config, and
every (scenario, variant, seed) through `python -m pipeline.train` (reused when already done)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from benchmarks.lib.paths import ROOT
from benchmarks.lib.runs import run_train
from benchmarks.headroom import corpora as K
from benchmarks.headroom.analysis import cached_analysis
from benchmarks.headroom.scenarios import Scenario, with_steps
from benchmarks.headroom.variants import (GRID, RATE_FROM, TUNED, applies, filter_batch, grid,
                                          overrides_for, runs_late)
from pipeline.fsutil import atomic_write

# --------------------------------------------------------------------------- data


def fingerprint(vocab: int, docs: dict[str, list[str]]) -> str:
    """sha256 of a scenario's vocabulary size and documents ({source: [text]})."""
    return hashlib.sha256(json.dumps([vocab, docs], sort_keys=True).encode()).hexdigest()


def prepare(sc: Scenario, scale: dict, data_root: Path) -> dict[str, Path]:
    """The scenario's sources as prepared directories (resumable): documents -> jsonl -> one
    tokenizer trained on all of them (`lai-prep tokenizer`) -> one `lai-prep` run per source with
    that tokenizer; a source of several parts (Scenario.parts) packs them into one directory. The
    clean source (or, with a val set drawn from the mix, every training source) keeps 10% of its
    documents for validation. ROOT/documents.sha256 fingerprints the documents and vocabulary it
    was prepared from: prepared data from other documents (a changed generator or --scale) is an
    error, never silently reused."""
    root = data_root / sc.name
    dirs = {name: root / name for name in sc.prepared}
    docs = sc.documents(scale)
    digest = fingerprint(sc.vocab, docs)
    stamp = root / "documents.sha256"
    if all((d / "manifest.json").is_file() for d in dirs.values()) and stamp.is_file():
        if stamp.read_text().strip() != digest:
            raise SystemExit(f"error: {root}: prepared from other documents than the scenario "
                             "generates now; delete it and the scenario's runs, or choose another "
                             "--out")
        return dirs
    files = {part: K.write_jsonl(docs[part], root / "src" / f"{part}.jsonl") for part in docs}
    py = [sys.executable, "-m", "data_prep"]
    srcs = [a for name, f in files.items() for a in ("--source", f"{name}=jsonl:{f}")]
    val = {sc.clean} if sc.val == "clean" else set(sc.weights)

    def prep(cmd):
        p = subprocess.run(py + cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"error: lai-prep failed for scenario {sc.name}: "
                             f"{(p.stdout + p.stderr).strip().splitlines()[-1]}")

    prep(["tokenizer", *srcs, "--out", str(root / "tokenizer"), "--vocab-size", str(sc.vocab),
          "--progress", "0"])
    for name, d in dirs.items():
        parts = [a for part in sc.parts_of(name) for a in ("--source", f"{part}=jsonl:{files[part]}")]
        groups = ["--groups", str(sc.groups)] if sc.groups and name in sc.weights else []
        prep([*parts, "--tokenizer", f"spm:{root / 'tokenizer' / 'tokenizer.model'}",
              "--out", str(d), "--val-fraction", "0.1" if name in val else "0", "--progress", "0",
              *groups])
    with atomic_write(stamp, "w") as f:
        f.write(digest + "\n")
    return dirs


def base_config(sc: Scenario, size: dict, dirs: dict[str, Path]) -> dict:
    return {
        "run": {"seed": 0, "resume": "auto", "save_every": 0, "keep_checkpoints": 1},
        "data": {"sources": [{"path": str(dirs[s]), "weight": w} for s, w in sc.weights.items()],
                 "val_sources": ([{"path": str(dirs[sc.clean]), "weight": 1.0}] if sc.val == "clean"
                                 else [{"path": str(dirs[s]), "weight": w}
                                       for s, w in sc.weights.items()]),
                 "seq_len": size["seq_len"]},
        "model": {"family": "llama", "n_layer": size["n_layer"], "hidden": size["hidden"],
                  "n_head": size["n_head"], "tie_word_embeddings": True},
        "train": {"steps": size["steps"], "global_batch": size["global_batch"],
                  "micro_batch": size["micro_batch"], "grad_accum": 0,
                  "zero_stage": 0, "precision": size["precision"], "lr": size["lr"],
                  "min_lr": size["min_lr"], "warmup_steps": size["warmup"],
                  "eval_every": size["eval_every"], "eval_batches": size["eval_batches"]},
        "lai": {"warmup_steps": size["lai_warmup"]},
        "log": {"every": 10, "histogram_every": 0},
    }


def data_line(sc: Scenario, dirs: dict[str, Path], size: dict) -> str:
    """Sources, tokens, mixing shares and how many passes over each source the run makes."""
    from pipeline.format.manifest import load_manifest
    total_w = sum(sc.weights.values())
    run_tokens = size["steps"] * size["global_batch"] * size["seq_len"]
    parts = []
    for s, w in sc.weights.items():
        m = load_manifest(dirs[s])
        n = sum(e.num_tokens for e in m.shards_of("train"))
        epochs = run_tokens * w / total_w / max(n, 1)
        parts.append(f"{s} {n / 1e3:.0f}k train tokens, {w / total_w:.0%} of the mix "
                     f"(~{epochs:.1f} epochs)")
    return "; ".join(parts) + f"; vocab {sc.vocab} (one sentencepiece BPE for all sources)"


# --------------------------------------------------------------------------- runs


@dataclass
class Plan:
    """One scenario ready to run: its sources, base config, settings and batch."""
    scenario: Scenario
    dirs: dict[str, Path]
    config: Path                 # the base config every run of the scenario starts from
    size: dict                   # the size's settings with the scenario's changes
    filter_batch: int            # sequences of one global micro-batch (what caps apply to)
    info: dict                   # for the report: data line, changed settings


def plan(sc: Scenario, size: dict, nproc: int, data_root: Path, out: Path) -> Plan:
    """Prepare the scenario's data (resumable) and write its base config to OUT/<scenario>/."""
    ssize = {**size, **sc.train}
    ssize = with_steps(ssize, ssize["steps"] * sc.length)
    dirs = prepare(sc, size["scale"], data_root)
    config = out / sc.name / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(base_config(sc, ssize, dirs), sort_keys=False))
    return Plan(sc, dirs, config, ssize, filter_batch(ssize, nproc),
                {"data": data_line(sc, dirs, ssize),
                 "train": {**sc.train, **({"steps": ssize["steps"]} if sc.length != 1 else {})}})


def run_all(plans: dict[str, Plan], names: list[str], variants: dict[str, list[str]],
            seeds: list[int], out: Path, jobs: int, nproc: int):
    """Every applicable (scenario, variant, seed) through the trainer, `jobs` at once, then
    analysed (each analysis with its run's wall and CPU seconds, `wall_s`, `cpu_s`): first the variants that need
    nothing else and the static grid (on the first seed, if `static-tuned` is asked for), then
    the variants at RATE_FROM's exclusion rate or with the grid's winner (`static-tuned` on the
    first seed is the winning grid run itself). Returns ({scenario: {variant: {seed: analysis}}},
    {scenario: RATE_FROM's mean exclusion rate}, [run timings], {scenario: grid summary})."""
    from tqdm import tqdm
    results: dict[str, dict[str, dict[int, dict]]] = {s: {} for s in plans}
    rates = {s: float("nan") for s in plans}
    grids: dict[str, dict] = {}
    timings: list[dict] = []
    first, later = [], []
    for p in plans.values():
        for n in names:
            if applies(n, p.scenario):
                (later if runs_late(variants[n]) else first).extend((p, n, s) for s in seeds)
        if TUNED in names and applies(TUNED, p.scenario):
            first += [(p, f"{GRID}{i}", seeds[0]) for i in range(len(grid(p.scenario)))]
            later = [j for j in later if (j[0], j[1], j[2]) != (p, TUNED, seeds[0])]
    bar = tqdm(total=len(first) + len(later), desc="headroom runs", unit="run")

    def job(p: Plan, name: str, seed: int) -> None:
        sc = p.scenario
        ov = overrides_for(name, variants, sc, p.dirs, rates[sc.name], p.filter_batch,
                           grids.get(sc.name, {}).get("weights"))
        run_dir = out / sc.name / name.replace("@", "-at-") / f"seed{seed}"
        t = run_train(p.config, run_dir, seed, ov, nproc)
        timings.append(t)
        r = {**cached_analysis(run_dir, sc, p.size["lai_warmup"]), "wall_s": t["wall_s"],
             "cpu_s": t["cpu_s"]}
        results[sc.name].setdefault(name, {})[seed] = r
        bar.set_postfix_str(f"{sc.name} {name} s{seed}: val {r['final_val_loss']:.3f} "
                            f"excl {r['excluded']:.2f}")
        bar.update()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for batch in (first, later):
            for f in [pool.submit(job, *j) for j in batch]:
                f.result()
            for s, by_variant in results.items():
                if RATE_FROM in by_variant:
                    rates[s] = float(np.mean([r["excluded"] for r in by_variant[RATE_FROM].values()]))
                if TUNED in names and applies(TUNED, plans[s].scenario) and s not in grids:
                    grids[s] = pick_static(plans[s].scenario, by_variant, seeds[0])
    bar.close()
    return results, rates, timings, grids


def pick_static(sc: Scenario, by_variant: dict[str, dict[int, dict]], seed: int) -> dict:
    """The grid's winner (lowest final val loss on `seed`): {"weights", "grid": [[weights, val
    loss]]}; its run is `static-tuned`'s on that seed (moved out of the rows)."""
    mixes = grid(sc)
    finals = [by_variant.pop(f"{GRID}{i}")[seed] for i in range(len(mixes))]
    best = int(np.argmin([r["final_val_loss"] for r in finals]))
    by_variant.setdefault(TUNED, {})[seed] = finals[best]
    return {"weights": mixes[best],
            "grid": [[m, r["final_val_loss"]] for m, r in zip(mixes, finals)]}

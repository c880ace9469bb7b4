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

from benchmarks import common as C
from benchmarks.headroom import corpora as K
from benchmarks.headroom.analysis import cached_analysis
from benchmarks.headroom.scenarios import Scenario
from benchmarks.headroom.variants import RATE_FROM, filter_batch, needs_rate, overrides_for
from pipeline.fsutil import atomic_write

# --------------------------------------------------------------------------- data


def fingerprint(vocab: int, docs: dict[str, list[str]]) -> str:
    """sha256 of a scenario's vocabulary size and documents ({source: [text]})."""
    return hashlib.sha256(json.dumps([vocab, docs], sort_keys=True).encode()).hexdigest()


def prepare(sc: Scenario, scale: dict, data_root: Path) -> dict[str, Path]:
    """The scenario's sources as prepared directories (resumable): documents -> jsonl -> one
    tokenizer trained on all of them (`lai-prep tokenizer`) -> one `lai-prep` run per source with
    that tokenizer. The clean source keeps 10% of its documents for validation. ROOT/documents.sha256
    fingerprints the documents and vocabulary it was prepared from: prepared data from other
    documents (a changed generator or --scale) is an error, never silently reused."""
    root = data_root / sc.name
    dirs = {name: root / name for name in sc.weights}
    docs = sc.documents(scale)
    digest = fingerprint(sc.vocab, docs)
    stamp = root / "documents.sha256"
    if all((d / "manifest.json").is_file() for d in dirs.values()) and stamp.is_file():
        if stamp.read_text().strip() != digest:
            raise SystemExit(f"error: {root}: prepared from other documents than the scenario "
                             "generates now; delete it and the scenario's runs, or choose another "
                             "--out")
        return dirs
    files = {name: K.write_jsonl(docs[name], root / "src" / f"{name}.jsonl") for name in sc.weights}
    py = [sys.executable, "-m", "data_prep"]
    srcs = [a for name, f in files.items() for a in ("--source", f"{name}=jsonl:{f}")]

    def prep(cmd):
        p = subprocess.run(py + cmd, cwd=C.ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"error: lai-prep failed for scenario {sc.name}: "
                             f"{(p.stdout + p.stderr).strip().splitlines()[-1]}")

    prep(["tokenizer", *srcs, "--out", str(root / "tokenizer"), "--vocab-size", str(sc.vocab),
          "--progress", "0"])
    for name, f in files.items():
        prep(["--source", f"{name}=jsonl:{f}", "--tokenizer",
              f"spm:{root / 'tokenizer' / 'tokenizer.model'}", "--out", str(dirs[name]),
              "--val-fraction", "0.1" if name == sc.clean else "0", "--progress", "0"])
    with atomic_write(stamp, "w") as f:
        f.write(digest + "\n")
    return dirs


def base_config(sc: Scenario, size: dict, dirs: dict[str, Path]) -> dict:
    return {
        "run": {"seed": 0, "resume": "auto", "save_every": 0, "keep_checkpoints": 1},
        "data": {"sources": [{"path": str(dirs[s]), "weight": w} for s, w in sc.weights.items()],
                 "val_sources": [{"path": str(dirs[sc.clean]), "weight": 1.0}],
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
    dirs = prepare(sc, size["scale"], data_root)
    config = out / sc.name / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(base_config(sc, ssize, dirs), sort_keys=False))
    return Plan(sc, dirs, config, ssize, filter_batch(ssize, nproc),
                {"data": data_line(sc, dirs, ssize), "train": sc.train})


def run_all(plans: dict[str, Plan], names: list[str], variants: dict[str, list[str]],
            seeds: list[int], out: Path, jobs: int, nproc: int):
    """Every (scenario, variant, seed) through the trainer, `jobs` at once, then analysed: the
    variants at RATE_FROM's exclusion rate after the others. Returns ({scenario: {variant: {seed:
    analysis}}}, {scenario: RATE_FROM's mean exclusion rate}, [run timings])."""
    from tqdm import tqdm
    results: dict[str, dict[str, dict[int, dict]]] = {s: {} for s in plans}
    rates = {s: float("nan") for s in plans}
    timings: list[dict] = []
    bar = tqdm(total=len(plans) * len(names) * len(seeds), desc="headroom runs", unit="run")

    def job(p: Plan, name: str, seed: int) -> None:
        sc = p.scenario
        ov = overrides_for(name, variants, sc, p.dirs, rates[sc.name], p.filter_batch)
        run_dir = out / sc.name / name.replace("@", "-at-") / f"seed{seed}"
        timings.append(C.run_train(p.config, run_dir, seed, ov, nproc))
        r = cached_analysis(run_dir, sc, p.size["lai_warmup"])
        results[sc.name].setdefault(name, {})[seed] = r
        bar.set_postfix_str(f"{sc.name} {name} s{seed}: val {r['final_val_loss']:.3f} "
                            f"excl {r['excluded']:.2f}")
        bar.update()

    first = [(p, n, s) for p in plans.values() for n in names if not needs_rate(variants[n])
             for s in seeds]
    later = [(p, n, s) for p in plans.values() for n in names if needs_rate(variants[n])
             for s in seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for batch in (first, later):
            for f in [pool.submit(job, *j) for j in batch]:
                f.result()
            for s, by_variant in results.items():
                if RATE_FROM in by_variant:
                    rates[s] = float(np.mean([r["excluded"] for r in by_variant[RATE_FROM].values()]))
    bar.close()
    return results, rates, timings

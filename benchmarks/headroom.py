"""Quality with headroom: scenarios in which a perfect filter measurably wins, and the share of that
win each filter recovers.

One command (seeds fixed; resumable: finished runs and their analyses are reused):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.headroom                   # the suite, CPU
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.headroom --variants all    # + the levers
    .venv/bin/python -m benchmarks.headroom --scenarios conflict --variants lai-global --seeds 0,1,2
    .venv/bin/python -m benchmarks.headroom --add 'lai-cap0.1=lai.enabled=true lai.filter=lai
        lai.max_exclude_frac=0.1'                            # a new variant: dotted overrides
    .venv/bin/python -m benchmarks.headroom --size gpu --jobs 1 --nproc 8        # a GPU node
    .venv/bin/python -m benchmarks.headroom --scenarios conflict --variants none,oracle \
        --seeds 0 --steps 20 --out /tmp/headroom --no-doc                       # a smoke run

Every run goes through the real trainer (`python -m pipeline.train`, DeepSpeed ZeRO 0; torchrun
over gloo when --nproc > 1). `lai-default` is LAI as the trainer ships it; every other LAI variant
changes one thing of it (see VARIANTS). A finished run is reused only if it ran with the same
trainer arguments.

Each scenario is a training mix of prepared sources (generated text and text CPython ships, through
the real `lai-prep`: one shared tokenizer, one prepared directory per source, so a packed sequence
comes from one source) and a validation set that stands for what the user wants:

  stubs     repeated low-loss harm, several epochs: facts about made-up countries (the clean data,
            ~3 epochs) mixed with templated placeholder pages of the same countries ("capital
            unknown; flag unknown; ..."): near-duplicates of each other, the lowest-loss data of the
            mix, and they teach "unknown" where a fact belongs
  domain    domain targeting: the target (country facts) is 25% of the mix, the rest standard
            library code and the Python language reference; val = the target domain
  conflict  conflicting content: 25% of the documents state a consistent wrong value for every
            fact (the same myth each time), the rest the truth; val = the truth

Reference rows: `none` (no filter); `ceiling` (the same steps on the clean / target source alone);
`oracle` (`lai.filter=oracle`: in each global batch exactly the sequences of the harmful sources are
excluded, under the scenario's cap, which is >= their share, so it drops them all). Every filter runs
under that same cap (`lai.max_exclude_frac`); random and loss-based exclusion, and `oracle@rate`,
at the exclusion rate `lai-default` measured. A scenario counts when oracle minus none
is at least 4x the standard deviation over seeds of that paired difference. The global batch
(`train.global_batch`) is the size's on any number of ranks.

Metrics per scenario and variant, from each run's TensorBoard (`val/loss`) and ledger: final val
loss (mean +- std over seeds); the paired difference to `none` of the same seed (same init, same
data order) with its 95% t-interval; the share of the oracle's gain recovered,
(none - method) / (none - oracle); steps to reach none's final val loss; AUROC of the filter's score
for the harmful sequences (after the LAI warmup); the excluded fraction of each source.
Writes docs/results/headroom-<size>.json, docs/img/headroom_<scenario>.png and the `headroom-summary`
(top) and `headroom` sections of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import string
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from benchmarks import common as C
from benchmarks import corpora as K

# --------------------------------------------------------------------------- sizes

SIZES = {
    # 1 process per run, 2 runs at once on 2 cores: ~20-60 CPU s a run (see docs/RESULTS.md)
    "cpu": {"n_layer": 2, "hidden": 64, "n_head": 2, "seq_len": 64, "global_batch": 16,
            "micro_batch": 16,
            "steps": 300, "lr": 5e-3, "min_lr": 2e-4, "warmup": 20, "lai_warmup": 20,
            "eval_every": 25, "eval_batches": 8, "nproc": 1, "jobs": 2, "precision": "fp32",
            "scale": {"stubs_entities": 12, "stubs_clean_docs": 500, "stubs_docs": 150,
                      "domain_entities": 24, "domain_docs": 2000, "code_chars": 1_500_000,
                      "conflict_entities": 12, "conflict_clean_docs": 1500, "conflict_docs": 500}},
    # one GPU per run, GPT-2-small-ish width; more countries and documents so the facts stay
    # hard for the larger model (not yet measured: no GPU was available to this work)
    "gpu": {"n_layer": 8, "hidden": 512, "n_head": 8, "seq_len": 256, "global_batch": 64,
            "micro_batch": 64,
            "steps": 3000, "lr": 1e-3, "min_lr": 1e-4, "warmup": 200, "lai_warmup": 100,
            "eval_every": 100, "eval_batches": 16, "nproc": 1, "jobs": 1, "precision": "bf16",
            "scale": {"stubs_entities": 3000, "stubs_clean_docs": 60_000, "stubs_docs": 20_000,
                      "domain_entities": 3000, "domain_docs": 200_000, "code_chars": 40_000_000,
                      "conflict_entities": 3000, "conflict_clean_docs": 150_000,
                      "conflict_docs": 50_000}},
}

# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    story: str                                   # what it stands for
    weights: dict[str, float]                    # training sources -> mixing weights
    harmful: tuple[str, ...]                     # what the oracle drops (lai.oracle_sources)
    clean: str                                   # the ceiling's source; its val split = val set
    cap: float                                   # exclusion cap of every filter
    vocab: int
    documents: Callable[[dict], dict[str, list[str]]]   # size scale -> {source: documents}
    train: dict = field(default_factory=dict)    # per-scenario changes to the size's settings

    @property
    def harmful_share(self) -> float:
        return sum(self.weights[s] for s in self.harmful) / sum(self.weights.values())


def _stubs(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["stubs_entities"], seed=0)
    return {"facts": K.profile_docs(t, n["stubs_clean_docs"], "true", seed=1),
            "stubs": K.profile_docs(t, n["stubs_docs"], "stub", seed=2)}


def _domain(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["domain_entities"], seed=1)
    return {"facts": K.profile_docs(t, n["domain_docs"], "true", seed=3),
            "code": K.code_docs(n["code_chars"]), "reference": K.reference_docs()}


def _conflict(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["conflict_entities"], seed=2)
    return {"facts": K.profile_docs(t, n["conflict_clean_docs"], "true", seed=4),
            "myths": K.profile_docs(t, n["conflict_docs"], "wrong", seed=5)}


SCENARIOS = {s.name: s for s in (
    Scenario("stubs", "Repeated low-loss harm: placeholder pages over several epochs",
             "Facts about made-up countries, seen about three times over the run, mixed 3:1 with "
             "templated placeholder pages of the same countries (every value \"unknown\"): "
             "near-duplicates of each other and the lowest-loss data of the mix, which teach the "
             "model to say \"unknown\" where a fact belongs. Validation: held-out fact pages.",
             {"facts": 3.0, "stubs": 1.0}, ("stubs",), "facts", 0.3, 512, _stubs),
    Scenario("domain", "Domain targeting: the target is a quarter of the mix",
             "Continued pretraining towards a knowledge domain: country facts are 25% of the mix, "
             "the rest Python standard library code and the Python language reference (prose). "
             "Validation: held-out documents of the target domain. The oracle drops every "
             "off-target sequence.",
             {"facts": 1.0, "code": 1.5, "reference": 1.5}, ("code", "reference"), "facts", 0.8,
             1024, _domain),
    Scenario("conflict", "Conflicting content: a consistent myth in 25% of the documents",
             "A quarter of the documents state a wrong value for every fact, the same wrong value "
             "each time (label noise in text form); the rest state the truth. Validation: held-out "
             "documents stating the truth.",
             {"facts": 3.0, "myths": 1.0}, ("myths",), "facts", 0.3, 512, _conflict),
)}

# --------------------------------------------------------------------------- variants

# name -> dotted overrides. $cap = the scenario's exclusion cap (every filter gets
# lai.max_exclude_frac=$cap first; a variant may override it), $harmful = the harmful sources,
# $rate = the exclusion rate RATE_FROM measured (those variants run after it),
# $rate_cap = a cap that excludes round($rate x global micro-batch) sequences, $clean = the
# ceiling's data.sources. `lai-default` is the trainer's LAI as shipped (nothing but the filter
# switched on): after a change of the trainer's defaults, delete its runs to remeasure it. The
# other LAI variants change one thing of it each, so a row differs from `lai-default` by what its
# name says.
LAI = ["lai.enabled=true", "lai.filter=lai"]
OFF = ["lai.enabled=false"]
EXACT = ["lai.method=exact"]
RAW = ["lai.normalize=none", "lai.threshold=0.0", "lai.memory_weight=0.0"]   # value <= 0 dropped
VARIANTS: dict[str, list[str]] = {
    "none": OFF + ["lai.filter=none"],
    "ceiling": OFF + ["lai.filter=none", "data.sources=$clean"],
    "oracle": OFF + ["lai.filter=oracle", "lai.oracle_sources=[$harmful]"],
    "lai-default": LAI,
    "lai-global": LAI + ["lai.reference=global"],
    "lai-token_pair": LAI + EXACT + ["lai.pairing=token_pair"],
    "lai-aligned": LAI + EXACT + ["lai.pairing=aligned"],
    "lai-pooled": LAI + EXACT + ["lai.pairing=pooled"],
    "lai-paper": LAI + EXACT + ["lai.pairing=aligned", "lai.include_self=true",
                                "lai.reference=local"] + RAW,
    "full-gradient": OFF + ["lai.filter=full_gradient"],
    "loss@rate": OFF + ["lai.filter=loss", "lai.baseline_rate=$rate"],
    "random@rate": OFF + ["lai.filter=random", "lai.baseline_rate=$rate"],
    "mixing": ["lai.enabled=true", "lai.filter=none", "lai.mixing=true"],
    # what each lever of the default buys (issue 10)
    "lai-raw": LAI + RAW,
    "lai-no-memory": LAI + ["lai.memory_weight=0.0"],
    "lai-adam": LAI + ["lai.precondition=adam"],
    "oracle@rate": OFF + ["lai.filter=oracle", "lai.oracle_sources=[$harmful]",
                          "lai.max_exclude_frac=$rate_cap"],
}
SUITE = ("none", "ceiling", "oracle", "lai-default", "lai-global", "lai-token_pair", "lai-aligned",
         "lai-pooled", "lai-paper", "full-gradient", "loss@rate", "random@rate", "mixing")
LEVERS = ("lai-raw", "lai-no-memory", "lai-adam", "oracle@rate")
REFERENCES = ("none", "oracle")       # always run: every row is read against them
RATE_FROM = "lai-default"           # the rate-matched baselines run at its exclusion rate


def needs_rate(overrides: list[str]) -> bool:
    return any("$rate" in o for o in overrides)


# --------------------------------------------------------------------------- data


def prepare(sc: Scenario, scale: dict, data_root: Path) -> dict[str, Path]:
    """The scenario's sources as prepared directories (resumable): documents -> jsonl -> one
    tokenizer trained on all of them (`lai-prep tokenizer`) -> one `lai-prep` run per source with
    that tokenizer. The clean source keeps 10% of its documents for validation."""
    root = data_root / sc.name
    dirs = {name: root / name for name in sc.weights}
    if all((d / "manifest.json").is_file() for d in dirs.values()):
        return dirs
    docs = sc.documents(scale)
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


def filter_batch(size: dict, nproc: int) -> int:
    """Sequences of one global micro-batch (what the filter cap applies to) on `nproc` ranks."""
    from pipeline.config.batch import resolve_batch
    from pipeline.config.schema import TrainConfig
    t = TrainConfig(global_batch=size["global_batch"], micro_batch=size["micro_batch"],
                    grad_accum=0)
    resolve_batch(t, nproc)
    return t.micro_batch * nproc


def overrides_for(name: str, variants: dict, sc: Scenario, dirs: dict[str, Path], rate: float,
                  global_batch: int) -> list[str]:
    """The dotted overrides of variant `name` in scenario `sc`; `global_batch`: sequences of one
    global micro-batch (what $rate_cap is for)."""
    ov = list(variants[name])
    if name not in ("none", "ceiling"):
        ov = [f"lai.max_exclude_frac={sc.cap}"] + ov
    rate = min(rate, sc.cap) if rate == rate else 0.0
    subs = {"cap": f"{sc.cap}", "harmful": ",".join(sc.harmful), "rate": f"{rate:.4f}",
            "rate_cap": f"{(round(rate * global_batch) + 0.5) / global_batch:.4f}",
            "clean": f"[{{path: '{dirs[sc.clean]}', weight: 1.0}}]"}
    return [string.Template(o).substitute(subs) for o in ov]


# --------------------------------------------------------------------------- analysis

ANALYSIS_VERSION = 1


def analyse_run(run_dir: Path, sc: Scenario, lai_warmup: int) -> dict:
    """Val curve, and from the ledger (steps after the LAI warmup): exclusion rate overall and per
    source, AUROC of the filter's score for the harmful sequences."""
    from pipeline.report.valuation import build_dataset, load_data_spec
    from pipeline.train.ledger import read_ledger
    steps, val = C.tb_scalars(run_dir / "tb", "val/loss")
    rows = read_ledger(run_dir)
    ds = build_dataset(load_data_spec(run_dir))
    cache: dict[int, str] = {}

    def source(seq_id: int) -> str:
        if seq_id not in cache:
            by: dict[str, int] = {}
            for sp in ds.locate(seq_id):
                by[sp.source] = by.get(sp.source, 0) + sp.num_tokens
            cache[seq_id] = max(by, key=by.get)
        return cache[seq_id]

    after = rows["step"] > lai_warmup
    src = np.array([source(int(i)) for i in rows["seq_id"][after]], dtype=object)
    kept, value, loss = rows["kept"][after], rows["value"][after], rows["loss"][after]
    harmful = np.isin(src, sc.harmful)
    out = {"val_steps": steps.tolist(), "val_loss": val.tolist(),
           "final_val_loss": float(val[-1]) if len(val) else float("nan"),
           "excluded": float((~kept).mean()) if len(kept) else float("nan"),
           "excluded_by_source": {s: float((~kept[src == s]).mean()) for s in sc.weights
                                  if (src == s).any()},
           "precision": float(harmful[~kept].mean()) if (~kept).any() else float("nan"),
           "loss_auroc": C.auroc(loss, harmful)}
    # the filter's score: low value = harmful (LAI, full gradient, oracle); loss-based: high loss
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["lai"]
    if cfg["filter"] == "loss":
        out["auroc"] = out["loss_auroc"]
    else:
        finite = np.isfinite(value)
        out["auroc"] = C.auroc(-value[finite], harmful[finite]) if finite.any() else float("nan")
    return out


def cached_analysis(run_dir: Path, sc: Scenario, lai_warmup: int) -> dict:
    path = run_dir.parent / f"{run_dir.name}.analysis.json"
    key = {"version": ANALYSIS_VERSION, "harmful": list(sc.harmful), "lai_warmup": lai_warmup}
    if path.is_file():
        d = json.loads(path.read_text())
        if d.get("key") == key:
            return d["result"]
    result = analyse_run(run_dir, sc, lai_warmup)
    from pipeline.fsutil import atomic_write_json
    atomic_write_json(path, json.loads(json.dumps({"key": key, "result": result})))
    return result


def summarise(results: dict[str, dict[int, dict]]) -> tuple[list[dict], dict]:
    """Rows per variant (paired with `none` and `oracle` of the same seed) and the scenario's
    headroom: oracle - none (mean, std over seeds, ratio, counts)."""
    none, oracle = results.get("none", {}), results.get("oracle", {})
    d_oracle = C.paired(oracle, none)
    gain, noise = C.mean_std(d_oracle)
    headroom = {"oracle_minus_none": gain, "std": noise,
                "ratio": -gain / noise if noise and noise > 0 else float("inf") if gain < 0 else 0.0,
                "seeds": len(d_oracle)}
    headroom["counts"] = bool(headroom["ratio"] >= 4 and len(d_oracle) >= 3)
    rows = []
    for name, by_seed in results.items():
        rs = list(by_seed.values())
        d = C.paired(by_seed, none)
        dm, half = C.ci95(d)
        reach = [C.steps_to_reach(by_seed[k]["val_steps"], by_seed[k]["val_loss"],
                                  none[k]["final_val_loss"]) for k in by_seed if k in none]
        row = {"variant": name, "seeds": len(rs),
               "final": C.mean_std([r["final_val_loss"] for r in rs])[0],
               "final_std": C.mean_std([r["final_val_loss"] for r in rs])[1],
               "delta": dm, "delta_ci": half, "delta_std": C.mean_std(d)[1],
               "share": dm / gain if gain and gain == gain else float("nan"),
               "reach": C.mean_std(reach)[0], "reached": sum(x == x for x in reach),
               "reach_of": len(reach)}
        for key in ("excluded", "auroc", "precision", "loss_auroc"):
            row[key] = C.mean_std([r[key] for r in rs])[0]
        sources = sorted({s for r in rs for s in r["excluded_by_source"]})
        row["excluded_by_source"] = {s: C.mean_std([r["excluded_by_source"].get(s, float("nan"))
                                                    for r in rs])[0] for s in sources}
        rows.append(row)
    return rows, headroom


# --------------------------------------------------------------------------- report


def plot(sc: Scenario, results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    refs = {"none": "k-", "ceiling": "k:", "oracle": "k--"}
    C.plot_paired_curves(ax, ax2, results,
                         lambda name: refs.get(name, "-" if name.startswith("lai") else "-."),
                         "validation loss (mean over seeds)", "minus `none` of the same seed")
    lo = min(min(r["val_loss"][-1] for r in by.values()) for by in results.values())
    ax.set_ylim(lo - 0.05, lo + 1.0)
    ax.set_title(sc.title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pm(mean: float, half: float) -> str:
    return "n/a" if mean != mean else f"{mean:+.3f}" + (f" ± {half:.3f}" if half == half else "")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


def scenario_section(sc: Scenario, info: dict, rows: list[dict], headroom: dict, rate: float,
                     size_name: str) -> str:
    h = headroom
    verdict = "counts" if h["counts"] else "does NOT count"
    L = [f"### {sc.name}: {sc.title}", "", sc.story, "",
         f"- data: {info['data']}",
         *([f"- this scenario's settings differ from the size's: {info['train']}"] if info["train"] else []),
         f"- harmful share of the mix {sc.harmful_share:.0%} ({', '.join(sc.harmful)}); every filter "
         f"capped at {sc.cap} of each global batch; rate-matched baselines at `{RATE_FROM}`'s "
         f"measured exclusion rate {rate:.3f}",
         f"- headroom: oracle minus none {h['oracle_minus_none']:+.3f}, paired std {h['std']:.3f} "
         f"over {h['seeds']} seeds: {h['ratio']:.1f}x the noise, so the scenario {verdict} "
         "(needs >= 4x, >= 3 seeds)",
         f"- AUROC of the per-sequence loss for the harmful sequences (the `none` runs): "
         f"{next((r['loss_auroc'] for r in rows if r['variant'] == 'none'), float('nan')):.2f}",
         "", f"![{sc.name}](img/headroom_{sc.name}_{size_name}.png)", ""]
    srcs = list(sc.weights)
    header = ["variant", "final val loss", "minus none [95% CI]", "share of oracle gain",
              "reach none's final", "AUROC", "excluded", *[f"excl. {s}" for s in srcs]]
    tab = []
    for r in rows:
        reach = "n/a" if r["reach_of"] == 0 else (
            f"{r['reach']:.0f} ({r['reached']}/{r['reach_of']})" if r["reached"] else f"never (0/{r['reach_of']})")
        tab.append([r["variant"], f"{r['final']:.3f} ± {r['final_std']:.3f}", _pm(r["delta"], r["delta_ci"]),
                    _pct(r["share"]) if r["variant"] != "none" else "", reach,
                    "n/a" if r["auroc"] != r["auroc"] else f"{r['auroc']:.2f}", _pct(r["excluded"]),
                    *[_pct(r["excluded_by_source"].get(s, float("nan"))) for s in srcs]])
    L += [C.md_table(header, tab), ""]
    return "\n".join(L)


def summary_section(scen: list[Scenario], per: dict, size_name: str, meta: dict) -> str:
    names: list[str] = []
    for sc in scen:
        for r in per[sc.name]["rows"]:
            if r["variant"] not in names:
                names.append(r["variant"])
    header = ["variant"] + [f"{sc.name}: minus none [95% CI] / share of oracle gain" for sc in scen]
    tab = [["*headroom: oracle - none (x noise)*"]
           + [f"{per[sc.name]['headroom']['oracle_minus_none']:+.3f} "
              f"({per[sc.name]['headroom']['ratio']:.1f}x{'' if per[sc.name]['headroom']['counts'] else ', does not count'})"
              for sc in scen]]
    for n in names:
        cells = []
        for sc in scen:
            r = next((x for x in per[sc.name]["rows"] if x["variant"] == n), None)
            cells.append("" if r is None else (
                f"{_pm(r['delta'], r['delta_ci'])} / {_pct(r['share'])}" if n != "none"
                else f"{r['final']:.3f} (val loss)"))
        tab.append([n] + cells)
    return "\n".join([
        "## Summary: quality with headroom (`python -m benchmarks.headroom`)", "",
        "Final validation loss of each filter minus that of no filter (`none`) with the same seed "
        "(same init, same data order), mean over seeds with its 95% t-interval (negative = better), "
        "and the share of the oracle's gain it recovers: (none - method) / (none - oracle). "
        "`ceiling` trains the same steps on the clean / target data alone; `oracle` excludes exactly "
        "the harmful sequences of each batch under the same cap as every filter "
        f"(`lai.filter=oracle`). {meta['line']} Details, per-source exclusion and AUROC: "
        "[the scenario sections](#quality-with-headroom).", "",
        C.md_table(header, tab), ""])


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
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
                   help="override a corpus size of the size's scale (use with --out; for sizing)")
    p.add_argument("--out", type=Path, default=C.OUT / "headroom")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    size = dict(SIZES[args.size])
    jobs, nproc = args.jobs or size["jobs"], args.nproc or size["nproc"]
    seeds = [int(s) for s in args.seeds.split(",")]
    scen, variants, names = select(args)
    if args.steps:
        if args.steps < 2:
            raise SystemExit(f"error: --steps {args.steps}: at least 2")
        f = args.steps / size["steps"]
        for key in ("warmup", "lai_warmup", "eval_every"):
            size[key] = max(1, min(args.steps - 1, round(size[key] * f)))
        size["steps"] = args.steps
    size["scale"] = dict(size["scale"])
    for kv in args.scale:
        key, _, v = kv.partition("=")
        if key not in size["scale"] or not v.isdigit():
            raise SystemExit(f"error: --scale {kv!r}: expected KEY=N with KEY one of "
                             f"{', '.join(size['scale'])}")
        size["scale"][key] = int(v)
    out = args.out / (args.size if not args.steps else f"{args.size}-steps{args.steps}")
    dirs, configs, info, ssize, filter_n = {}, {}, {}, {}, {}
    for sc in scen:
        ssize[sc.name] = {**size, **sc.train}
        filter_n[sc.name] = filter_batch(ssize[sc.name], nproc)
        dirs[sc.name] = prepare(sc, size["scale"], args.out / "data" / args.size)
        config = out / sc.name / "config.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(base_config(sc, ssize[sc.name], dirs[sc.name]),
                                         sort_keys=False))
        configs[sc.name] = config
        info[sc.name] = {"data": data_line(sc, dirs[sc.name], ssize[sc.name]),
                         "train": sc.train}
    results: dict[str, dict[str, dict[int, dict]]] = {sc.name: {} for sc in scen}
    timings: list[dict] = []
    rates = {sc.name: float("nan") for sc in scen}

    from tqdm import tqdm
    bar = tqdm(total=len(scen) * len(names) * len(seeds), desc="headroom runs", unit="run")

    def job(sc: Scenario, name: str, seed: int) -> None:
        ov = overrides_for(name, variants, sc, dirs[sc.name], rates[sc.name], filter_n[sc.name])
        run_dir = out / sc.name / name.replace("@", "-at-") / f"seed{seed}"
        timings.append(C.run_train(configs[sc.name], run_dir, seed, ov, nproc))
        r = cached_analysis(run_dir, sc, size["lai_warmup"])
        results[sc.name].setdefault(name, {})[seed] = r
        bar.set_postfix_str(f"{sc.name} {name} s{seed}: val {r['final_val_loss']:.3f} "
                            f"excl {r['excluded']:.2f}")
        bar.update()

    first = [(sc, n, s) for sc in scen for n in names if not needs_rate(variants[n]) for s in seeds]
    later = [(sc, n, s) for sc in scen for n in names if needs_rate(variants[n]) for s in seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for batch in (first, later):
            for f in [pool.submit(job, *j) for j in batch]:
                f.result()
            for sc in scen:
                if RATE_FROM in results[sc.name]:
                    rates[sc.name] = float(np.mean([r["excluded"]
                                                    for r in results[sc.name][RATE_FROM].values()]))
    bar.close()

    per = {}
    for sc in scen:
        order = [n for n in names if n in results[sc.name]]
        res = {n: dict(sorted(results[sc.name][n].items())) for n in order}
        rows, headroom = summarise(res)
        per[sc.name] = {"rows": rows, "headroom": headroom, "rate": rates[sc.name],
                        "runs": res, "info": info[sc.name]}
        print(f"{sc.name}: oracle - none {headroom['oracle_minus_none']:+.4f} "
              f"(std {headroom['std']:.4f}, {headroom['ratio']:.1f}x noise)")
        for r in rows:
            print(f"  {r['variant']:15s} val {r['final']:.4f}±{r['final_std']:.4f} "
                  f"d {r['delta']:+.4f}±{r['delta_ci']:.4f} share {r['share']:+.2f} "
                  f"excl {r['excluded']:.3f} AUROC {r['auroc']:.2f}")
    seconds = time.perf_counter() - t0
    wall = np.nansum([t["wall_s"] for t in timings])
    cpu = np.nansum([t["cpu_s"] for t in timings])
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.headroom " + " ".join(sys.argv[1:])
    meta = {"line": (f"Size `{args.size}`: llama {size['n_layer']} layers x {size['hidden']}, seq "
                     f"{size['seq_len']}, global batch {size['global_batch']}, {size['steps']} steps, lr "
                     f"{size['lr']} cosine; seeds {args.seeds}; {nproc} process(es) per run, {jobs} "
                     f"runs at once; machine: {C.machine()}; {C.now()}."),
            "command": cmd.strip(), "seconds": seconds, "runs": len(timings),
            "run_wall_s": float(wall), "run_cpu_s": float(cpu)}
    from pipeline.fsutil import atomic_write_json
    payload = {"size": size, "seeds": seeds, "meta": meta,
               "scenarios": {k: {kk: vv for kk, vv in v.items()} for k, v in per.items()}}
    atomic_write_json(out / "headroom.json", json.loads(json.dumps(payload, default=str)))
    if not args.no_doc:
        docs = C.ROOT / "docs"
        atomic_write_json(docs / "results" / f"headroom-{args.size}.json", json.loads(json.dumps(
            {**payload, "scenarios": {k: {kk: vv for kk, vv in v.items() if kk != "runs"}
                                      for k, v in per.items()}}, default=str)))
        for sc in scen:
            plot(sc, per[sc.name]["runs"], docs / "img" / f"headroom_{sc.name}_{args.size}.png")
        C.update_section(docs / "RESULTS.md", "headroom-summary", summary_section(scen, per, args.size, meta))
        body = ["## Quality with headroom", "",
                f"- command: `{meta['command']}`; this invocation {seconds / 60:.1f} min wall; "
                f"{len(timings)} trainer runs: {wall / 60:.1f} min of run wall time and "
                f"{cpu / 60:.1f} CPU min in all (runs skipped as already done report their earlier "
                "times)",
                f"- {meta['line']}",
                "- AUROC: harmful sequences = positives, ranked by the filter's score (low value; "
                "loss-based: high loss), steps after the LAI warmup; `reach none's final` = first "
                "step (val every "
                f"{size['eval_every']}) at which the run's val loss is at or below the final val loss "
                "of `none` with the same seed, mean over the seeds that get there; `excl. <source>` = "
                "excluded fraction of that source's sequences after the LAI warmup",
                "- variants: `lai-default` = LAI as the trainer ships it (token_pair sketch, "
                "lai.reference=auto, which resolves to the validation set here: its reference "
                "batches come from the same val split the evaluation reads; z-scored values cut at "
                "-1; memory across epochs), under the scenario's cap; every other `lai-*` row "
                "changes one thing of it: `lai-global` the reference (the global batch itself), "
                "`lai-<pairing>` the method (exact) and pairing, `lai-raw` the policy (raw value "
                "<= 0 dropped, no memory), `lai-no-memory` no memory, `lai-adam` Adam-aware "
                "scoring; `lai-paper` = the paper's code: aligned, exact, self term, local "
                "reference (with one process per run the local batch is the global batch), raw "
                "value <= 0 dropped; `full-gradient` = the exact full-gradient inner product "
                "against the global batch, raw value <= 0 dropped; `mixing` = no exclusion, the "
                "sources' sampling weights follow their mean LAI value against the val set "
                "(lai.mixing); `loss@rate` / `random@rate` / `oracle@rate` = highest-loss / random "
                f"/ harmful sequences excluded at `{RATE_FROM}`'s measured rate", ""]
        body += [scenario_section(sc, per[sc.name]["info"], per[sc.name]["rows"], per[sc.name]["headroom"],
                                  per[sc.name]["rate"], args.size) for sc in scen]
        C.update_section(docs / "RESULTS.md", "headroom", "\n".join(body))
    print(f"headroom: {len(scen)} scenario(s) x {len(names)} variants x {len(seeds)} seeds in "
          f"{seconds / 60:.1f} min ({cpu / 60:.1f} CPU min in the runs) -> {out}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())

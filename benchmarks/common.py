"""Shared helpers of the benchmark scripts: statistics (numpy only), the corruption operators,
the default prepared corpus, trainer runs and their TensorBoard scalars, plots of paired runs,
machine description, markdown tables, timing.

Corruption operators act on token arrays and (for line shuffling) on text through the corpus's
own tokenizer, so the same operator corrupts a whole document (benchmarks/corrupt.py) or a packed
training sequence (benchmarks/fidelity/).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"

# --------------------------------------------------------------------------- statistics


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


def auroc(scores, positives) -> float:
    """P(score of a random positive > score of a random negative), ties count one half."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def sign_agreement(a, b, threshold: float = 0.0) -> float:
    """Fraction of items on which two scores make the same keep (> threshold) / drop decision."""
    a = np.asarray(a) > threshold
    b = np.asarray(b) > threshold
    return float((a == b).mean())


def within_group_percentile(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rank-normalise values to (0, 1] within each group (e.g. each scored batch), so scores from
    batches with different references can be pooled for AUROC."""
    out = np.empty(len(values), dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        out[m] = rankdata(values[m]) / m.sum()
    return out


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x == x], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def ci95(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval of the mean) of the finite xs (nan if < 2)."""
    a = np.asarray([x for x in xs if x == x], dtype=np.float64)
    if a.size < 2:
        return (float(a.mean()) if a.size else float("nan")), float("nan")
    t = _T975[a.size - 2] if a.size - 1 <= len(_T975) else 1.96
    return float(a.mean()), float(t * a.std(ddof=1) / np.sqrt(a.size))


def paired(by_seed: dict, ref: dict, key: str = "final_val_loss") -> list[float]:
    """by_seed[k][key] - ref[k][key] for every seed k both have (same init, same data order)."""
    return [by_seed[k][key] - ref[k][key] for k in by_seed if k in ref]


def steps_to_reach(steps: Sequence, vals: Sequence, target: float) -> float:
    """The first step whose value is <= target (nan: never)."""
    for s, v in zip(steps, vals):
        if v <= target:
            return float(s)
    return float("nan")


# --------------------------------------------------------------------------- corruption

CORRUPTIONS = ("duplicate", "repeat", "shuffle", "garbage")
CORRUPTION_DOC = {
    "duplicate": "the document is replaced by one fixed boilerplate text (256 tokens of a real "
                 "document) tiled to its length: mass duplication, memorised fast, lowest loss",
    "repeat": "the document is replaced by a short span of itself (1-4 tokens) tiled to its length: "
              "degenerate repetition, low loss once learned",
    "shuffle": "the document's lines in random order: every line is real code, the order is not; "
               "per-token loss close to clean text",
    "garbage": "uniformly random token ids: trivially high loss",
}


class Corruptor:
    """Applies one corruption type to a 1-D token array; output has the same length.

    tokenizer: the corpus's pipeline.format.tokenizer.Tokenizer (needed by "shuffle" only); special ids
    (< num_special) are never produced by "garbage"; boilerplate: the token array "duplicate"
    copies (documents start at its beginning; `offset` = None picks a random window, as a
    packed sequence would see it). All randomness comes from the rng passed in.
    """

    def __init__(self, vocab_size: int, tokenizer=None, num_special: int = 4, boilerplate=None):
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.num_special = num_special
        self.boilerplate = None if boilerplate is None else np.asarray(boilerplate, dtype=np.int64)

    def __call__(self, kind: str, tokens: np.ndarray, rng: np.random.Generator,
                 offset: int | None = 0) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        if n == 0:
            return tokens.copy()
        if kind == "duplicate":
            if self.boilerplate is None or len(self.boilerplate) == 0:
                raise ValueError("the 'duplicate' corruption needs a boilerplate token array")
            b = self.boilerplate
            start = int(rng.integers(0, len(b))) if offset is None else offset
            return np.resize(np.roll(b, -start), n).astype(np.int64)
        if kind == "garbage":
            return rng.integers(self.num_special, self.vocab_size, size=n, dtype=np.int64)
        if kind == "repeat":
            period = int(rng.integers(1, 5))
            start = int(rng.integers(0, max(1, n - period)))
            span = tokens[start:start + period]
            return np.resize(span, n).astype(np.int64)
        if kind == "shuffle":
            if self.tokenizer is None:
                raise ValueError("the 'shuffle' corruption needs the corpus tokenizer")
            text = self.tokenizer.decode([int(t) for t in tokens if t >= self.num_special])
            lines = text.split("\n")
            rng.shuffle(lines)
            ids = np.asarray(self.tokenizer.encode("\n".join(lines)), dtype=np.int64)
            if len(ids) == 0:
                return tokens.copy()
            # same length as the input: trim, or continue with the shuffled text again
            return np.resize(ids, n).astype(np.int64)
        raise ValueError(f"unknown corruption {kind!r} (choose from {', '.join(CORRUPTIONS)})")


def median_minus_loss(losses: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """The loss ranking score the benchmarks report: median reference loss minus l_j (float64;
    reference = `losses` themselves unless `ref`). Higher = lower loss. (The trainer's loss filter,
    pipeline.lai.loss_scores, thresholds at its exclusion rate instead of the median.)"""
    losses = np.asarray(losses, dtype=np.float64)
    return float(np.median(losses if ref is None else np.asarray(ref, np.float64))) - losses


# --------------------------------------------------------------------------- corpus


def prepare_default_corpus(out_dir: Path, vocab_size: int, extra: Sequence[str] = ()) -> Path:
    """Run the real data prep (`python -m data_prep --source stdlib`) into out_dir unless a complete
    prepared directory (manifest.json) is already there. Returns out_dir."""
    if (out_dir / "manifest.json").is_file():
        return out_dir
    cmd = [sys.executable, "-m", "data_prep", "--source", "stdlib", "--out", str(out_dir),
           "--vocab-size", str(vocab_size), *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out_dir


# --------------------------------------------------------------------------- trainer runs


def run_train(config: Path, run_dir: Path, seed: int, overrides: Sequence[str], nproc: int) -> dict:
    """One trainer run (`python -m pipeline.train`): torchrun with `nproc` ranks (gloo on CPU), or
    a plain process when nproc is 1 (world of one). Skipped if RUN/final exists. Returns
    {"wall_s", "cpu_s"}: wall and CPU seconds of the launcher and everything it waited for,
    recorded in RUN.time.json next to the run with the trainer arguments it ran with (a skipped
    run reports its earlier times; SystemExit if it ran with other arguments, so a changed variant
    never reuses a stale run). Output goes to RUN.log next to the run; several runs may go at
    once (each rendezvous takes a free port)."""
    import json
    from pipeline.comm import free_port
    timing = run_dir.parent / f"{run_dir.name}.time.json"
    args = [str(config), f"run.out_dir={run_dir}", f"run.seed={seed}", *overrides]
    if (run_dir / "final").exists():
        done = json.loads(timing.read_text()) if timing.is_file() else \
            {"wall_s": float("nan"), "cpu_s": float("nan")}
        if done.get("args", args) != args:
            changed = [a for a in done["args"] if a not in args]
            raise SystemExit(f"error: {run_dir}: finished with other trainer arguments (then "
                             f"{' '.join(changed) or '-'}; now "
                             f"{' '.join(a for a in args if a not in done['args']) or '-'}); "
                             "delete it or choose another output folder")
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
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "args": args}
    timing.write_text(json.dumps(out) + "\n")
    return out


# --------------------------------------------------------------------------- TensorBoard


def tb_events(tb_dir: Path, tag: str) -> list[tuple[int, float, float]]:
    """(step, wall time, value) of every event of scalar `tag` in one TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]


STEP_PARTS = ("time_data_s", "time_forward_s", "time_lai_s", "time_backward_step_s")


def step_parts(tb_dir: Path) -> dict[str, float]:
    """Each phase of a step (STEP_PARTS): the median over the logging windows after the first of
    the slowest rank's time (perf_ranks/<part>_max, written by rank 0 for all ranks)."""
    return {tag: float(np.median([v for _, _, v in tb_events(tb_dir, f"perf_ranks/{tag}_max")][1:]))
            for tag in STEP_PARTS}


def tb_scalars(tb_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of scalar `tag` in one TensorBoard folder (empty arrays if absent)."""
    ev = tb_events(tb_dir, tag)
    return np.array([s for s, _, _ in ev]), np.array([v for _, _, v in ev])


def wall_tokens_per_s(run_dir: Path, tokens_per_step: int) -> float:
    """Tokens per second of a trainer run by the wall clock between its second and its last
    train/loss log line: everything the loop does (logging, ledger, timers), start-up excluded."""
    loss = tb_events(run_dir / "tb", "train/loss")
    if len(loss) < 2:
        return float("nan")
    (s0, w0, _), (s1, w1, _) = loss[1] if len(loss) > 2 else loss[0], loss[-1]
    return (s1 - s0) * tokens_per_step / (w1 - w0) if w1 > w0 else float("nan")


# --------------------------------------------------------------------------- reporting


def plot_paired_curves(ax, ax2, results: dict, style: Callable[[str], str], ylabel: str,
                       ylabel2: str, band: bool = False) -> None:
    """Per variant of results {variant: {seed: {"val_steps", "val_loss"}}}: on `ax` the val loss
    (mean over seeds; `band`: min..max), on `ax2` minus the "none" run of the same seed. A style
    without a colour letter ("-", "-.") gets a colour of its own (up to 20 variants)."""
    from matplotlib import colormaps
    palette = iter(colormaps["tab20"].colors)
    none = results.get("none", {})
    for name, by_seed in results.items():
        rs = list(by_seed.values())
        n = min(len(r["val_loss"]) for r in rs)
        if n == 0:
            continue
        steps = np.asarray(rs[0]["val_steps"][:n])
        vals = np.asarray([r["val_loss"][:n] for r in rs])
        fmt = style(name)
        kw = {"label": name, "lw": 1.2}
        if fmt[:1] not in tuple("bgrcmykw"):
            kw["color"] = next(palette, None)
        ax.plot(steps, vals.mean(0), fmt, **kw)
        if band:
            ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.12, color=kw.get("color"))
        seeds = [k for k in by_seed if k in none and len(none[k]["val_loss"]) >= n]
        if seeds:
            d = np.asarray([np.asarray(by_seed[k]["val_loss"][:n])
                            - np.asarray(none[k]["val_loss"][:n]) for k in seeds])
            ax2.plot(steps, d.mean(0), fmt, **kw)
    ax2.axhline(0, color="gray", lw=1)
    for a, label in ((ax, ylabel), (ax2, ylabel2)):
        a.set_xlabel("step")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), Python {platform.python_version()}")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def md_table(header: Sequence[str], rows: Sequence[Sequence], floatfmt: str = "{:.3f}") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if v != v else floatfmt.format(v)
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def keep_notes(path: Path, marker: str = "<!-- notes: kept across re-runs -->") -> str:
    """The hand-written tail of a generated doc (everything from `marker` on), or the bare marker."""
    if path.is_file():
        text = path.read_text()
        if marker in text:
            return text[text.index(marker):]
    return marker + "\n"


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1
                     ) -> dict[str, float]:
    """Best-of-`rounds` wall seconds of each fn, measured round-robin (one call of each per round)
    so that load from other processes hits all of them alike; min is the least noisy estimate of
    the undisturbed time on a shared machine. CUDA work is synchronised around each call."""
    import torch
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


RESULTS_HEADER = """# Results

Benchmarks that show what LAI costs and what it buys. Every section is generated by the script it
names (one command each; seeds fixed) and replaced when that script runs again. The fidelity table
(LAI vs the exact full-gradient inner product) is in [FIDELITY.md](FIDELITY.md).
"""


def update_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the block between `<!-- begin NAME -->` and `<!-- end NAME -->` of a
    generated markdown file, leaving the other sections as they are."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    doc = path.read_text() if path.is_file() else RESULTS_HEADER
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    from pipeline.fsutil import atomic_write
    with atomic_write(path, "w") as f:
        f.write(doc)


def lai_step_timings(model, x, scorers: dict, rounds: int = 5,
                     extra: dict | None = None) -> dict[str, float]:
    """Best-of-`rounds` seconds of one training step on x (int64 [B, T+1]) without LAI ("plain":
    forward, per-sequence loss, backward) and with each scorer (forward under LayerInputCapture
    of the scorer's layer set, LAI values -- with its Adam factors, if any -- masked backward:
    what pipeline.train does), measured round-robin. `extra` adds other callables to the same
    rounds."""
    import torch
    from pipeline.lai import LayerInputCapture, per_sequence_loss
    inp, tgt = x[:, :-1], x[:, 1:]
    model.train()

    def plain():
        model.zero_grad(set_to_none=True)
        per_sequence_loss(model(input_ids=inp).logits, tgt).mean().backward()

    def with_lai(scorer):
        def step():
            model.zero_grad(set_to_none=True)
            with LayerInputCapture(model, layers=scorer.layers) as cap:
                logits = model(input_ids=inp).logits
            losses = per_sequence_loss(logits, tgt)
            with torch.no_grad():
                keep = scorer.values(cap.inputs, logits, tgt,
                                     weights=scorer.input_weights(cap)) > 0
            (losses * keep).sum().div(len(losses)).backward()
        return step

    fns = {"plain": plain, **{k: with_lai(s) for k, s in scorers.items()}, **(extra or {})}
    out = time_interleaved(fns, rounds=rounds)
    model.zero_grad(set_to_none=True)
    return out

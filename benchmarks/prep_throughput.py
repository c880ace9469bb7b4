"""Data-prep throughput (tokens/s) on the stdlib corpus with 1 and 2 workers, side by side with raw
sentencepiece batch encoding of the same text in this process (one thread).

    python -m benchmarks.prep_throughput [--workers 1 2] [--repeats 3] [--tests] [--write-doc]
                                         [--groups K]

The tokenizer is trained once (the `lai-prep --source stdlib` default, 8192 BPE pieces); every
prep run then uses it via `--tokenizer spm:PATH` into a fresh directory, so a prep time covers the
whole tokenization phase: listing and reading the files, split hashing, the worker pool, shard
writing with fsync, checksums and the manifest. Tokens are counted without the appended EOS, as
raw encoding does. Best of --repeats. Target: prep >= 0.8 x raw x workers. --write-doc replaces
the "## Data prep throughput" section of docs/DATA_PREP.md (other sections are kept). --groups K
also runs each prep with `--groups K` (fit + assignment, data_prep.groups) and prints its wall time
as a ratio to the same prep without groups (interleaved, best of --repeats).
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from data_prep.groups import SAMPLE
from data_prep.options import PrepOptions
from data_prep.single import run_prep
from data_prep.sources import iter_documents, parse_source
from data_prep.tokenize import batched
from benchmarks.lib.machine import machine as machine_line
from pipeline.errors import cli_main
from pipeline.fsutil import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "DATA_PREP.md"
TARGET = 0.8


def machine() -> str:
    import sentencepiece
    return f"{machine_line()}, sentencepiece {sentencepiece.__version__}"


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process and of its reaped children (the pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def raw_encode(model: Path, docs: list[str]) -> tuple[int, float, tuple[float, float]]:
    """(tokens, wall s, (CPU s, 0)) of one batch-encode call."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))
    t0, (c0, _) = time.perf_counter(), cpu_seconds()
    ids = sp.encode(docs, out_type=int, num_threads=1)
    return sum(map(len, ids)), time.perf_counter() - t0, (cpu_seconds()[0] - c0, 0.0)


_SP = None


def _init_sp(model: str) -> None:
    global _SP
    import sentencepiece as spm
    _SP = spm.SentencePieceProcessor(model_file=model)


def _encode(texts: list[str]) -> int:
    return sum(map(len, _SP.encode(texts, out_type=int, num_threads=1)))


def raw_pool_encode(model: Path, docs: list[str], workers: int) -> float:
    """Wall s of bare sentencepiece encoding in a pool of `workers` processes (same batches as prep,
    nothing else): what `workers` encoders reach on this machine, the ceiling for prep."""
    batches = list(batched(docs, len))
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, initializer=_init_sp, initargs=(str(model),)) as pool:
        sum(pool.imap(_encode, batches))
    return time.perf_counter() - t0


def prep_encode(model: Path, source: str, out: Path, workers: int, groups: int = 0
                ) -> tuple[int, float, tuple[float, float]]:
    """(tokens without the appended EOS, wall s, (main CPU s, workers CPU s)) of one whole prep run."""
    shutil.rmtree(out, ignore_errors=True)
    t0, (m0, k0) = time.perf_counter(), cpu_seconds()
    m = run_prep(PrepOptions(sources=[parse_source(source)], out=out, tokenizer=f"spm:{model}",
                             workers=workers, progress=False, groups=groups))
    m1, k1 = cpu_seconds()
    return m.stats["num_tokens"] - m.stats["num_docs"], time.perf_counter() - t0, (m1 - m0, k1 - k0)


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.is_file() else "# Data preparation and loading\n"
    pattern = re.compile(r"^## Data prep throughput\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:  # before the loader's section when there is one
        loader = re.search(r"^## Loader\n", text, re.M)
        at = loader.start() if loader else len(text)
        text = text[:at].rstrip("\n") + "\n\n" + section + text[at:]
    with atomic_write(DOC, "w") as f:
        f.write(text)


@cli_main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.prep_throughput",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tests", action="store_true", help="include the stdlib test directories (~3x the text)")
    ap.add_argument("--write-doc", action="store_true", help=f"write the results into {DOC.relative_to(ROOT)}")
    ap.add_argument("--groups", type=int, default=0, metavar="K",
                    help="also prep with --groups K; print its wall time over prep's")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    source = "stdlib,tests=1" if args.tests else "stdlib"
    docs = [d for d in iter_documents(parse_source(source)) if d.strip()]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        print(f"training the default tokenizer on {source} ({len(docs)} docs, {mb:.1f} MB) ...", file=sys.stderr)
        run_prep(PrepOptions(sources=[parse_source(source)], out=tmp / "tok", progress=False))
        model = tmp / "tok" / "tokenizer.model"
        wall = {w: float("inf") for w in ["raw", *args.workers, *[f"pool{w}" for w in args.workers]]}
        cpu = {w: (float("inf"), 0.0) for w in wall}
        for _ in range(args.repeats):      # interleaved, so load changes hit every variant alike
            raw_tokens, s, c = raw_encode(model, docs)
            wall["raw"], cpu["raw"] = min(wall["raw"], s), min(cpu["raw"], c, key=sum)
            for w in args.workers:
                tokens, s, c = prep_encode(model, source, tmp / f"w{w}", w)
                assert tokens == raw_tokens, (tokens, raw_tokens)
                wall[w], cpu[w] = min(wall[w], s), min(cpu[w], c, key=sum)
                wall[f"pool{w}"] = min(wall[f"pool{w}"], raw_pool_encode(model, docs, w))
                if args.groups:
                    _, s, c = prep_encode(model, source, tmp / f"g{w}", w, args.groups)
                    wall[f"groups{w}"] = min(wall.get(f"groups{w}", s), s)
                    cpu[f"groups{w}"] = min(cpu.get(f"groups{w}", c), c, key=sum)
        raw_tps = raw_tokens / wall["raw"]
    load = os.getloadavg()[0]
    cmd = "python -m benchmarks.prep_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["## Data prep throughput", "",
             f"`{cmd.strip()}` on {machine()}, {datetime.date.today().isoformat()} (1-min load "
             f"{load:.1f} at the end: the machine was shared). Corpus `{source}`: {len(docs)} documents, "
             f"{mb:.1f} MB, {raw_tokens:,} tokens with the default 8192-piece BPE model. Raw = "
             f"`SentencePieceProcessor.encode(all documents, num_threads=1)` in one process; prep = the "
             f"whole `lai-prep --tokenizer spm:MODEL` run (read, split, encode in the pool, write shards, "
             f"checksums, manifest). Best of {args.repeats}; target prep >= {TARGET} x raw x workers.", "",
             "| workers | prep tokens/s | raw tokens/s (1 thread) | prep / (raw x workers) | prep wall s "
             "| prep CPU s: main + workers | raw CPU s | raw CPU / prep CPU | raw pool tokens/s | prep / raw pool |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    raw_cpu = cpu["raw"][0]
    for w in args.workers:
        tps = raw_tokens / wall[w]
        main_cpu, worker_cpu = cpu[w]
        lines.append(f"| {w} | {tps / 1e6:.2f} M | {raw_tps / 1e6:.2f} M | {tps / (raw_tps * w):.2f} | {wall[w]:.2f} "
                     f"| {main_cpu:.2f} + {worker_cpu:.2f} | {raw_cpu:.2f} | {raw_cpu / (main_cpu + worker_cpu):.2f} "
                     f"| {raw_tokens / wall[f'pool{w}'] / 1e6:.2f} M | {wall[f'pool{w}'] / wall[w]:.2f} |")
    verdict = ", ".join(f"{w} worker{'s' * (w > 1)}: {'met' if r >= TARGET else 'not met'} ({r:.2f})"
                        for w, r in ((w, raw_tokens / wall[w] / (raw_tps * w)) for w in args.workers))
    lines += ["", f"Target prep >= {TARGET} x raw x workers: {verdict}.",
              "", "With 1 worker prep encodes in-process (no pool). The CPU columns (best of the repeats) depend "
              "much less on how busy the machine is than wall times: raw CPU / prep CPU is the share of all "
              "of prep's CPU time that is single-process sentencepiece encoding, i.e. about the ratio prep "
              "reaches per worker when it has a free core per worker plus a little for the main process. "
              "Raw pool = bare `encode` of the same batches in a pool of that many processes (no reading, "
              "splitting or writing): what that many encoders reach on this machine at that moment, so "
              "prep / raw pool isolates prep's own overhead from the machine's parallel scaling."]
    if args.groups:
        lines += ["", f"`--groups {args.groups}` (fit on a {SAMPLE}-document sample + assignment in "
                  "the pool) over the same prep without groups, wall and CPU (main + workers): "
                  + ", ".join(f"{w} worker{'s' * (w > 1)}: wall {wall[f'groups{w}']:.2f} s / "
                              f"{wall[w]:.2f} s = {wall[f'groups{w}'] / wall[w]:.2f}, CPU "
                              f"{sum(cpu[f'groups{w}']) / sum(cpu[w]):.2f}"
                              for w in args.workers) + "."]
    section = "\n".join(lines) + "\n\n"
    print(section)
    if args.write_doc:
        write_doc(section)


if __name__ == "__main__":
    sys.exit(main())

"""Loader throughput: sequences/s and tokens/s of RankLoader.next_batch (micro-batch 8, one rank)
for seq_len 256 and 1024, side by side with the floor: slicing the same memory-mapped tokens
contiguously into the same int64 tensors (no shuffling, packing index or mixing).

    python -m benchmarks.loader_throughput [--data DIR ...] [--seconds 3] [--write-doc]

Without --data it uses data/stdlib when prepared, else generates a random-token directory
(lognormal document lengths, median ~1500 tokens) in a temporary folder. --write-doc replaces the
"## Loader" section of docs/DATA_PREP.md (other sections are kept).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data import PackedDataset, RankLoader
from benchmarks.lib.machine import machine as machine_line
from pipeline.errors import cli_main
from pipeline.fsutil import atomic_write
from pipeline.format.manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "DATA_PREP.md"
MICRO = 8


def random_data_dir(out: Path, tokens: int, seed: int = 0) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.datagen import make_data_dir  # the test fixture writer: real shards + manifest
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < tokens:
        n = int(min(rng.lognormal(np.log(1500), 1.0), 50_000)) + 1
        docs.append(np.append(rng.integers(3, 32000, size=n), 2))
        total += n + 1
    return make_data_dir(out, docs, vocab_size=32000, source="random", docs_per_shard=4000)


def time_batches(next_batch, seconds: float) -> tuple[float, int]:
    next_batch()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        next_batch()
        n += 1
    return n * MICRO / elapsed, n


def raw_floor(ds: PackedDataset, seq_len: int):
    """The same tensors cut contiguously from the first shard, the fastest a loader could be."""
    tokens = ds.streams[0].readers[0].tokens
    per = (len(tokens) - 1) // seq_len
    state = {"i": 0}

    def next_batch():
        x = np.empty((MICRO, seq_len + 1), dtype=np.int64)
        for row in x:
            i = state["i"] % per
            row[:] = tokens[i * seq_len: i * seq_len + seq_len + 1]
            state["i"] += 1
        return {"input_ids": torch.from_numpy(np.ascontiguousarray(x[:, :-1])),
                "targets": torch.from_numpy(np.ascontiguousarray(x[:, 1:]))}
    return next_batch


def machine() -> str:
    return f"{machine_line()} (1-min load {os.getloadavg()[0]:.1f} at the end)"


def write_doc(section: str) -> None:
    """Replace the section of DOC whose heading is `section`'s first line (or append it)."""
    text = DOC.read_text() if DOC.is_file() else "# Data preparation and loading\n"
    heading = re.escape(section.splitlines()[0])
    pattern = re.compile(rf"^{heading}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    with atomic_write(DOC, "w") as f:
        f.write(text)


@cli_main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.loader_throughput",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="*", type=Path, help="prepared directories (mixed with equal weights)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    ap.add_argument("--random-tokens", type=int, default=20_000_000)
    ap.add_argument("--write-doc", action="store_true", help=f"write the results into {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = None
    if not args.data:
        default = ROOT / "data" / "stdlib"
        if (default / MANIFEST_NAME).is_file():
            args.data = [default]
        else:
            tmp = tempfile.TemporaryDirectory()
            print(f"generating {args.random_tokens:,} random tokens ...", flush=True)
            args.data = [random_data_dir(Path(tmp.name) / "random", args.random_tokens)]
    rows = []
    for seq_len in (256, 1024):
        ds = PackedDataset([(d, 1.0) for d in args.data], seq_len)
        loader_sps, n = time_batches(RankLoader(ds, MICRO, 0, 1).next_batch, args.seconds)
        floor_sps, _ = time_batches(raw_floor(ds, seq_len), args.seconds)
        rows.append((seq_len, loader_sps, loader_sps * seq_len, floor_sps, loader_sps / floor_sps, n))
        print(f"seq_len {seq_len}: loader {loader_sps:,.0f} seq/s ({loader_sps * seq_len / 1e6:.1f} M tok/s), "
              f"raw floor {floor_sps:,.0f} seq/s, ratio {loader_sps / floor_sps:.2f}", flush=True)
    data_desc = (f"{args.random_tokens:,} random tokens" if tmp is not None
                 else ", ".join(str(d) for d in args.data))
    lines = ["## Loader", "",
             f"`python -m benchmarks.loader_throughput` on {machine()}; one rank, micro-batch {MICRO}, "
             f"data: {data_desc} ({ds.summary()}), page cache warm. Loader = `RankLoader.next_batch` "
             "(blend lookup, shuffled packing index, int64 input_ids/targets tensors); floor = "
             "contiguous slices of the same memmap into the same tensors.", "",
             "| seq_len | loader seq/s | loader tokens/s | floor seq/s | loader / floor |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {s} | {a:,.0f} | {t / 1e6:.2f} M | {f:,.0f} | {r:.2f} |" for s, a, t, f, r, _ in rows]
    if args.write_doc:
        write_doc("\n".join(lines) + "\n\n")
        print(f"wrote {DOC}")
    print(f"done: loader {rows[0][1]:,.0f} seq/s at seq_len 256, {rows[1][1]:,.0f} seq/s at 1024")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

"""What the trainer's data checks cost: the data.verify pass (sha256 of a shard plus its smallest
and largest token id, pipeline.format.verify.ShardCheck) against hashing alone and reading alone,
and the loader's per-batch token-id range check against the batch it guards.

    python -m benchmarks.data_checks [--mb 256] [--seconds 3] [--write-doc]

Generated uint16 shards (random ids below 32000) in a temporary folder, page cache warm (read
once before timing), so the verify numbers are what one core can hash: a cold disk or a network
filesystem bounds them from below. --write-doc replaces the "## Data checks" section of
docs/DATA_PREP.md.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.loader_throughput import DOC, ROOT, machine, random_data_dir, write_doc
from pipeline.data import PackedDataset, RankLoader
from pipeline.errors import cli_main
from pipeline.format.indexed import bin_path
from pipeline.format.manifest import load_manifest
from pipeline.format.verify import CHUNK, ShardCheck
from pipeline.fsutil import sha256_file


def best_mb_per_s(fn, nbytes: int, repeats: int = 3) -> float:
    best = min(_seconds(fn) for _ in range(repeats))
    return nbytes / best / 1e6


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_only(path: Path) -> None:
    buf = bytearray(CHUNK)
    with open(path, "rb") as f:
        while f.readinto(buf):
            pass


def per_call_us(fn, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return elapsed / n * 1e6


@cli_main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.data_checks",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="size of the generated (and verified) data")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per batch measurement")
    ap.add_argument("--write-doc", action="store_true", help=f"write the results into {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = random_data_dir(Path(tmp) / "random", args.mb * 500_000)
        m = load_manifest(d)
        checks = [ShardCheck(d, e, np.dtype(m.dtype), m.tokenizer.vocab_size) for e in m.shards]
        paths = [bin_path(c.prefix) for c in checks]
        nbytes = sum(c.nbytes for c in checks)
        for p in paths:
            read_only(p)                                   # warm the page cache
        rates = {"read": best_mb_per_s(lambda: [read_only(p) for p in paths], nbytes),
                 "sha256": best_mb_per_s(lambda: [sha256_file(p) for p in paths], nbytes),
                 "verify": best_mb_per_s(lambda: [c.run() for c in checks], nbytes)}
        print(", ".join(f"{k} {v:,.0f} MB/s" for k, v in rates.items()), flush=True)
        rows = []
        for seq_len in (1024, 4096):
            ds = PackedDataset([(d, 1.0)], seq_len)
            loader = RankLoader(ds, 8, 0, 1)
            x = np.stack([ds.sample(i) for i in range(8)])
            seq_ids = np.arange(8)
            check_us = per_call_us(lambda: ds.check_tokens(x, seq_ids), args.seconds)
            batch_us = per_call_us(loader.next_batch, args.seconds)
            rows.append((seq_len, check_us, batch_us))
            print(f"seq_len {seq_len}: range check {check_us:.1f} us per batch of 8, "
                  f"next_batch {batch_us:.1f} us ({check_us / batch_us:.1%})", flush=True)
    lines = ["## Data checks", "",
             f"`python -m benchmarks.data_checks` on {machine()}; {len(checks)} uint16 shards, "
             f"{nbytes / 1e6:,.0f} MB in all, page cache warm (the verify rate is one core hashing; a cold disk or a "
             "network filesystem can be slower).", "",
             "data.verify (sha256 of .idx and .bin + smallest/largest id, one read), per process:", "",
             "| read only | sha256 only | verify (sha256 + id range) | verify / sha256 |",
             "|---:|---:|---:|---:|",
             f"| {rates['read']:,.0f} MB/s | {rates['sha256']:,.0f} MB/s | {rates['verify']:,.0f} MB/s "
             f"| {rates['verify'] / rates['sha256']:.2f} |", "",
             "The pass is shared out over the ranks by bytes, so a first start costs about "
             f"data bytes / (ranks x {rates['verify']:,.0f} MB/s) here (1 TB on 64 ranks: "
             f"{1e12 / (64 * rates['verify'] * 1e6):.0f} s; on 8 ranks: "
             f"{1e12 / (8 * rates['verify'] * 1e6) / 60:.0f} min), and nothing on a resumed start "
             "unless a shard's files changed.", "",
             "The loader's per-batch range check (min and max over the int64 batch), micro-batch 8:", "",
             "| seq_len | range check us/batch | next_batch us/batch | share |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {c:.1f} | {b:,.1f} | {c / b:.1%} |" for s, c, b in rows]
    if args.write_doc:
        write_doc("\n".join(lines) + "\n\n")
        print(f"wrote {DOC}")
    print(f"done: verify {rates['verify']:,.0f} MB/s (sha256 alone {rates['sha256']:,.0f}); range "
          f"check {rows[0][1]:.1f} us per batch ({rows[0][1] / rows[0][2]:.1%} of next_batch)")


if __name__ == "__main__":
    main()

"""lai-prep partitioned (Slurm array jobs): tokenizer -> parts -> merge.

    lai-prep tokenizer --source ... --out OUT            the tokenizer + OUT/parts/plan.json
                                                         (documents per source)
    lai-prep --source ... --out OUT --num-parts N --part K   part K of N: its documents' shards
                                                         (<source>-<split>-pKKKKK-NNNNN) and
                                                         OUT/parts/part-KKKKK.json
    lai-prep merge OUT                                   shards renamed to their final names,
                                                         manifest.json written last

Parts run concurrently and each touches only its own files; a killed part or merge is resumed by
running it again.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from data_prep.options import PrepOptions, check_options, log, read_optional, refuse_changed
from data_prep.shards import SHARD_RE, shard_intact, shard_prefix, verify_shard
from data_prep.sources.cursor import ReadStats
from data_prep.sources.spec import SourceSpec
from data_prep.split import SPLITS, DocSplitter
from data_prep.stages import (TOKENIZER_INFO, choose_dtype, ensure_groups, ensure_tokenizer,
                              load_progress, make_manifest, summary, tokenize_all)
from pipeline.errors import UserError
from pipeline.format.indexed import bin_path, idx_path
from pipeline.format.manifest import MANIFEST_NAME, Manifest, ShardEntry, TokenizerEntry, load_manifest
from pipeline.format.provenance import docs_path
from pipeline.format.tokenizer import tokenizer_sha256
from pipeline.fsutil import atomic_write_json, read_json

PARTS = "parts"
PLAN = "plan.json"


def part_range(count: int, part: int, num_parts: int) -> tuple[int, int]:
    """Documents [lo, hi) of a source with `count` documents that part `part` of `num_parts` owns."""
    return count * part // num_parts, count * (part + 1) // num_parts


def run_tokenizer(opts: PrepOptions) -> TokenizerEntry:
    """`lai-prep tokenizer ...`: train/install the tokenizer and count documents for the parts."""
    t0 = time.perf_counter()
    check_options(opts)
    out = opts.out
    plan_path = out / PARTS / PLAN
    plan = read_optional(plan_path)
    fresh = plan is None or plan.get("args") != opts.reading_args()
    entry, counts = ensure_tokenizer(opts, with_counts=fresh)
    if counts is not None:
        atomic_write_json(plan_path, {"args": opts.reading_args(), "doc_counts": counts})
    choose_dtype(entry, opts.dtype, opts.out)
    ensure_groups(opts)                       # fitted once here; the parts reuse OUT/groups.json
    log(f"lai-prep: tokenizer {entry.kind} (vocab {entry.vocab_size}) ready in {out} "
        f"({time.perf_counter() - t0:.1f} s); now run the parts with --num-parts N --part K")
    return entry


def _part_file(out: Path, part: int, suffix: str = "json") -> Path:
    return out / PARTS / f"part-{part:05d}.{suffix}"


def _part_inputs(opts: PrepOptions) -> tuple[dict, TokenizerEntry, np.dtype]:
    """(plan, tokenizer entry, token dtype) that `lai-prep tokenizer` left for the parts, refused
    if it was run with other options or the tokenizer changed since."""
    out = opts.out
    plan = read_optional(out / PARTS / PLAN)
    info = read_optional(out / TOKENIZER_INFO)
    if plan is None or info is None:
        raise UserError(f"{out}: no tokenizer/plan yet; run `lai-prep tokenizer` with the same options first")
    if plan.get("args") != opts.reading_args():
        refuse_changed(out / PARTS / PLAN, plan.get("args", {}), opts.reading_args())
    if info.get("args") != opts.tokenizer_args():
        refuse_changed(out / TOKENIZER_INFO, info.get("args", {}), opts.tokenizer_args())
    entry = TokenizerEntry(**info["entry"])
    if tokenizer_sha256(out / entry.path) != entry.sha256:
        raise UserError(f"{out / entry.path}: tokenizer does not match {TOKENIZER_INFO} (checksum)")
    return plan, entry, choose_dtype(entry, opts.dtype, opts.out)


def run_part(opts: PrepOptions) -> None:
    """`lai-prep --source ... --out OUT --num-parts N --part K`: tokenize part K's documents."""
    t0 = time.perf_counter()
    check_options(opts)
    args = opts.output_args()
    out, k, n = opts.out, opts.part, opts.num_parts
    assert k is not None                    # the CLI runs this for --part K
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--part: must be in [0, --num-parts) = [0, {n}), got {k}")
    if (out / MANIFEST_NAME).is_file():
        log(f"lai-prep: {out} is already merged (manifest.json exists); nothing to do for part {k}")
        return
    plan, entry, dtype = _part_inputs(opts)
    done = read_optional(_part_file(out, k))
    if done is not None and done.get("args") == args and all(
            shard_intact(out, ShardEntry(**s)) for s in done["shards"]):
        log(f"lai-prep: part {k} of {n} is already complete")
        return
    if opts.force:
        _wipe_part(out, k)
    _clean_stale_part(out, k)
    run = load_progress(_part_file(out, k, "progress.json"), args, out)
    ranges: dict[str, tuple[int, int | None]] = {s.name: part_range(plan["doc_counts"][s.name], k, n) for s in opts.sources}
    read = tokenize_all(opts, run, entry, dtype, ranges, require_nonempty=False)
    atomic_write_json(_part_file(out, k), {"args": args, "part": k, "num_parts": n, "tokenizer": asdict(entry),
                                           "dtype": dtype.name, "split": DocSplitter(opts.val_fraction, opts.seed).to_json(),
                                           "sources": [s.to_json() for s in opts.sources],
                                           "shards": [asdict(s) for s in run.shards], "read": read})
    _part_file(out, k, "progress.json").unlink(missing_ok=True)
    ntok = sum(e.num_tokens for e in run.shards)
    log(f"lai-prep: part {k} of {n}: {ntok:,} tokens in {len(run.shards)} shards, "
        f"{time.perf_counter() - t0:.1f} s; run `lai-prep merge {out}` when all parts are done")


def _completed_parts(out: Path) -> list[dict]:
    """Every part's result, by part; refused unless all N are there, made with one set of
    arguments and the tokenizer in OUT."""
    files = sorted((out / PARTS).glob("part-[0-9][0-9][0-9][0-9][0-9].json"))
    if not files:
        raise UserError(f"{out / PARTS}: no completed parts to merge")
    parts = [read_json(f) for f in files]
    n = parts[0]["num_parts"]
    missing = sorted(set(range(n)) - {p["part"] for p in parts})
    if missing:
        raise UserError(f"{out / PARTS}: {len(missing)} of {n} parts not complete (missing: "
                        f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''})")
    for f, p in zip(files, parts):
        if p["args"] != parts[0]["args"]:
            refuse_changed(f, parts[0]["args"], p["args"])
    parts.sort(key=lambda p: p["part"])
    entry = TokenizerEntry(**parts[0]["tokenizer"])
    if any(p["tokenizer"] != parts[0]["tokenizer"] for p in parts) or not (out / entry.path).exists() \
            or tokenizer_sha256(out / entry.path) != entry.sha256:
        raise UserError(f"{out / entry.path}: the parts were not all made with this tokenizer; re-run the parts")
    return parts


def _move_shards(out: Path, parts: list[dict], specs: list[SourceSpec], vocab_size: int) -> list[ShardEntry]:
    """Rename the parts' shards of each (source, split) to the final names, in part order,
    and verify each. Idempotent: already moved shards are found at their final names."""
    shards: list[ShardEntry] = []
    for spec in specs:
        for split in SPLITS:
            index = 0
            for p in parts:
                for e in sorted((ShardEntry(**s) for s in p["shards"] if s["source"] == spec.name
                                 and s["split"] == split), key=lambda e: e.prefix):
                    final = shard_prefix(spec.name, split, index)
                    index += 1
                    files = (docs_path, bin_path, idx_path) if e.docs_sha256 else (bin_path, idx_path)
                    for path in files:        # .idx last (as the writer does)
                        src, dst = path(out / e.prefix), path(out / final)
                        if src.is_file():
                            src.replace(dst)
                        elif not dst.is_file():
                            raise UserError(f"{src}: shard of part {p['part']} is missing")
                    moved = ShardEntry(**{**asdict(e), "prefix": final})
                    verify_shard(out, moved, parts[0]["dtype"], vocab_size)
                    shards.append(moved)
    return shards


def run_merge(out: Path) -> Manifest:
    """`lai-prep merge OUT`: check all parts, rename their shards to the final names, write the manifest.
    Idempotent: a killed merge can be re-run."""
    t0 = time.perf_counter()
    out = Path(out)
    if (out / MANIFEST_NAME).is_file():
        log(f"lai-prep: {out} is already merged")
        return load_manifest(out)
    parts = _completed_parts(out)
    first = parts[0]
    specs = [SourceSpec(**s) for s in first["sources"]]
    entry = TokenizerEntry(**first["tokenizer"])
    shards = _move_shards(out, parts, specs, entry.vocab_size)
    read = {s.name: ReadStats() for s in specs}
    for p in parts:
        for name, st in p["read"].items():
            read[name].add(ReadStats(**st))
    args = {k: v for k, v in first["args"].items() if k != "num_parts"}
    opts = PrepOptions(sources=specs, out=out)
    splitter = DocSplitter(first["split"]["val_fraction"], first["split"]["seed"])
    m = make_manifest(opts, entry, np.dtype(first["dtype"]), splitter, shards,
                      {k: asdict(v) for k, v in read.items()}, args)
    m.stats["num_parts"] = len(parts)
    m.save(out)
    log(summary(m, out, time.perf_counter() - t0))
    return m


def _clean_stale_part(out: Path, part: int) -> None:
    """Remove this part's temporaries of a killed run (only its own: parts run concurrently)."""
    for pattern, d in ((f".*-p{part:05d}-*.tmp.*", out), (f".part-{part:05d}.*.tmp.*", out / PARTS)):
        for p in d.glob(pattern):
            p.unlink(missing_ok=True)


def _wipe_part(out: Path, part: int) -> None:
    """--force in a part: remove only this part's shards and state (other parts may be running)."""
    for p in out.glob(f"*-p{part:05d}-[0-9][0-9][0-9][0-9][0-9].*"):
        if SHARD_RE.match(p.name):
            p.unlink()
    for p in (out / PARTS).glob(f"part-{part:05d}.*"):
        p.unlink()

"""Data prep orchestration: sources -> tokenizer -> shards -> manifest, resumable.

State in the output directory OUT (all written atomically):

    tokenizer.model | tokenizer/   the tokenizer the shards were made with
    tokenizer-info.json            how it was made ({"args", "entry"}); reused when args match
    progress.json                  single run: completed shards (with checksums) + finished sources
    parts/plan.json                partitioned: documents per source (written by `lai-prep tokenizer`)
    parts/part-KKKKK.progress.json / part-KKKKK.json   partitioned: progress / result of part K
    manifest.json                  written last; its presence = the directory is complete

Re-running the same command resumes: listed shards whose checksums match are kept, the document
stream is re-read (cheap) and documents already in those shards are skipped, so a killed run
followed by a re-run writes the same bytes as an uninterrupted run. Documents are tokenized in
input order and shard boundaries depend only on the stream, so the worker count never changes the
output.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data_prep.shards import SHARD_RE, ShardStreams, shard_intact, shard_prefix, verify_shard
from data_prep.sources import ReadStats, SourceSpec, check_source, iter_documents
from data_prep.split import SPLITS, DocSplitter
from data_prep.tokenize import Progress, batched, encode_stream
from data_prep.tokenizer import (HF_DIR, SPM_FILE, TrainConfig, check_train_config, install_tokenizer,
                                 sample_sentences, tokenizer_entry, tokenizer_sha256, train_sentencepiece,
                                 training_sentences)
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_json, read_json, remove_stale_tmp
from pipeline.indexed import bin_path, idx_path, token_dtype
from pipeline.manifest import MANIFEST_NAME, Manifest, ShardEntry, TokenizerEntry, load_manifest

PROGRESS = "progress.json"
TOKENIZER_INFO = "tokenizer-info.json"
PARTS = "parts"
PLAN = "plan.json"


@dataclass
class PrepOptions:
    sources: list[SourceSpec]
    out: Path
    tokenizer: str = "train"           # train | spm:PATH | hf:NAME_OR_PATH
    vocab_size: int = 8192
    model_type: str = "bpe"
    byte_fallback: bool = True
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    train_sentences: int = 250_000
    train_threads: int = 0             # 0: same as workers
    val_fraction: float = 0.01
    seed: int = 0
    shard_tokens: int = 100_000_000
    dtype: str = "auto"                # auto | uint16 | int32
    max_docs: int | None = None        # per source
    max_bytes: int | None = None       # per source (UTF-8 bytes of non-empty documents)
    strict: bool = False
    workers: int = 2
    force: bool = False
    num_parts: int = 1
    part: int | None = None
    progress: bool | None = None       # tqdm bar: None = when stderr is a terminal

    def reading_args(self) -> dict[str, Any]:
        """What defines the document streams."""
        return {"sources": [s.to_json() for s in self.sources], "max_docs": self.max_docs,
                "max_bytes": self.max_bytes, "strict": self.strict}

    def tokenizer_args(self) -> dict[str, Any]:
        """What defines the tokenizer."""
        a: dict[str, Any] = {"tokenizer": self.tokenizer}
        if self.tokenizer == "train":
            a.update(self.reading_args(), **{k: v for k, v in asdict(self.train_config()).items() if k != "num_threads"})
            if self.model_type == "unigram":     # unigram EM depends on the thread count
                a["train_threads"] = self.train_config().num_threads
        return a

    def output_args(self) -> dict[str, Any]:
        """What defines the shards: the manifest's `args`; re-runs must match them."""
        a = {**self.reading_args(), "tokenizer": self.tokenizer_args(), "dtype": self.dtype,
             "val_fraction": self.val_fraction, "seed": self.seed, "shard_tokens": self.shard_tokens}
        if self.part is not None:
            a["num_parts"] = self.num_parts
        return a

    def train_config(self) -> TrainConfig:
        return TrainConfig(vocab_size=self.vocab_size, model_type=self.model_type, byte_fallback=self.byte_fallback,
                           pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id, unk_id=self.unk_id,
                           max_sentences=self.train_sentences, seed=self.seed,
                           num_threads=self.train_threads or self.workers)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _diff(old: Any, new: Any, path: str = "") -> str | None:
    """The first difference between two JSON-like values, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            d = _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            d = _diff(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if old == new else f"{path}: {json.dumps(old)} -> {json.dumps(new)}"


def _refuse_changed(path: Path, old: dict, new: dict) -> None:
    raise UserError(f"{path}: the output was made with different arguments ({_diff(old, new)}); re-run with the "
                    f"same arguments to resume, pass --force to start over, or use another --out")


def _read_json(path: Path) -> dict | None:
    """The JSON at `path`, or None if there is none yet (UserError if unreadable)."""
    return read_json(path) if path.is_file() else None


def _clean_stale(out: Path, part: int | None) -> None:
    """Remove temporaries of killed runs. A part only removes its own (parts run concurrently)."""
    if part is None:
        for d in (out, out / PARTS):
            if d.is_dir():
                remove_stale_tmp(d)             # files and directories
        return
    for pattern, d in ((f".*-p{part:05d}-*.tmp.*", out), (f".part-{part:05d}.*.tmp.*", out / PARTS)):
        for p in d.glob(pattern):
            p.unlink(missing_ok=True)


def _wipe(out: Path) -> None:
    """--force: remove every lai-prep output in `out` (shards, state, tokenizer); nothing else."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name) or p.name in (MANIFEST_NAME, PROGRESS, TOKENIZER_INFO, SPM_FILE):
            p.unlink()
    for d in (out / PARTS, out / HF_DIR):
        shutil.rmtree(d, ignore_errors=True)


def _wipe_part(out: Path, part: int) -> None:
    """--force in a part: remove only this part's shards and state (other parts may be running)."""
    for p in out.glob(f"*-p{part:05d}-[0-9][0-9][0-9][0-9][0-9].*"):
        if SHARD_RE.match(p.name):
            p.unlink()
    for p in (out / PARTS).glob(f"part-{part:05d}.*"):
        p.unlink()


# ---------------------------------------------------------------------------------------------
# documents


def documents(spec: SourceSpec, opts: PrepOptions, stats: ReadStats, lo: int = 0,
              hi: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Non-empty documents (text, UTF-8 bytes) with stream index in [lo, hi), honoring --max-docs /
    --max-bytes; counts documents, empty ones, invalid UTF-8 and bytes of the range into `stats`."""
    reader = ReadStats()
    bad_seen = 0
    for i, text in enumerate(iter_documents(spec, strict=opts.strict, stats=reader)):
        if (hi is not None and i >= hi) or (opts.max_docs is not None and i >= opts.max_docs) or (
                opts.max_bytes is not None and stats.bytes >= opts.max_bytes):
            break
        bad, bad_seen = reader.bad_utf8 - bad_seen, reader.bad_utf8
        if i < lo:
            continue
        stats.docs += 1
        stats.bad_utf8 += bad
        if not text.strip():
            stats.empty += 1
            continue
        data = text.encode("utf-8")
        stats.bytes += len(data)
        yield text, data


def _require_nonempty(spec: SourceSpec, stats: ReadStats) -> None:
    if stats.docs == stats.empty:
        raise UserError(f"{spec.path or spec.kind}: source '{spec.name}' has no non-empty documents "
                        f"({stats.docs} read, {stats.empty} empty)")


# ---------------------------------------------------------------------------------------------
# tokenizer


def _count_docs(opts: PrepOptions) -> dict[str, int]:
    """Documents per source (empty ones included), the unit parts are cut in."""
    counts = {}
    for spec in opts.sources:
        stats = ReadStats()
        for _ in documents(spec, opts, stats):
            pass
        _require_nonempty(spec, stats)
        counts[spec.name] = stats.docs
    return counts


def ensure_tokenizer(opts: PrepOptions, *, count_docs: bool = False) -> tuple[TokenizerEntry, dict[str, int] | None]:
    """Train or install the tokenizer in OUT unless OUT already has one made with the same args.
    With count_docs, also returns the number of documents of each source (for partitioning)."""
    out = opts.out
    info_path = out / TOKENIZER_INFO
    info = _read_json(info_path)
    if info and info.get("args") == opts.tokenizer_args():
        entry = TokenizerEntry(**info["entry"])
        if (out / entry.path).exists() and tokenizer_sha256(out / entry.path) == entry.sha256:
            return entry, (_count_docs(opts) if count_docs else None)
    info_path.unlink(missing_ok=True)
    counts: dict[str, int] | None = None
    if opts.tokenizer == "train":
        cfg = opts.train_config()
        t0 = time.perf_counter()
        counts = {}

        def corpus() -> Iterator[str]:
            for spec in opts.sources:
                stats = ReadStats()
                for text, _ in documents(spec, opts, stats):
                    yield text
                _require_nonempty(spec, stats)
                counts[spec.name] = stats.docs

        sentences = sample_sentences(training_sentences(corpus()), cfg.max_sentences, cfg.seed)
        log(f"lai-prep: training a {cfg.vocab_size}-piece {cfg.model_type} sentencepiece model on "
            f"{len(sentences):,} lines ({cfg.num_threads} threads)")
        train_sentencepiece(sentences, out / SPM_FILE, cfg)
        log(f"lai-prep: tokenizer trained in {time.perf_counter() - t0:.1f} s -> {out / SPM_FILE}")
        kind = "sentencepiece"
    else:
        kind = install_tokenizer(opts.tokenizer, out)
        if count_docs:
            counts = _count_docs(opts)
    entry = tokenizer_entry(out, kind)
    atomic_write_json(info_path, {"args": opts.tokenizer_args(), "entry": asdict(entry)})
    return entry, counts


def choose_dtype(entry: TokenizerEntry, requested: str, out: Path) -> np.dtype:
    """The token dtype; refuses a tokenizer whose ids do not fit it."""
    if requested == "auto":
        return token_dtype(entry.vocab_size)
    if requested not in ("uint16", "int32"):
        raise UserError(f"--dtype: must be auto, uint16 or int32, got {requested!r}")
    dtype = np.dtype(requested)
    if entry.vocab_size - 1 > np.iinfo(dtype).max:
        raise UserError(f"{out / entry.path}: vocab size {entry.vocab_size} does not fit {requested} "
                        f"(ids up to {entry.vocab_size - 1}); use --dtype int32 or auto")
    return dtype


def _check_options(opts: PrepOptions) -> None:
    """Fail before reading anything on bad options, missing inputs or an unusable --out."""
    if opts.tokenizer == "train":
        check_train_config(opts.train_config())
        if opts.dtype == "uint16" and opts.vocab_size > 65536:
            raise UserError(f"--vocab-size {opts.vocab_size}: does not fit --dtype uint16 (ids up to 65535)")
    DocSplitter(opts.val_fraction, opts.seed)
    for spec in opts.sources:
        check_source(spec)
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{opts.out}: cannot create the output directory ({e.strerror or e})") from None


# ---------------------------------------------------------------------------------------------
# tokenization


@dataclass
class _Run:
    """Progress of one single run or one part, saved after every completed shard."""
    path: Path
    args: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    sources_done: dict[str, dict] = field(default_factory=dict)

    def save(self) -> None:
        atomic_write_json(self.path, {"args": self.args, "shards": [asdict(s) for s in self.shards],
                                      "sources_done": self.sources_done})

    def add(self, entry: ShardEntry) -> None:
        self.shards.append(entry)
        self.save()


def _load_run(path: Path, args: dict, out: Path, extra: list[ShardEntry] | None = None) -> _Run:
    """The saved progress (or `extra`, a broken manifest's shards), keeping per (source, split)
    only the leading shards that are intact."""
    raw = _read_json(path)
    if raw is not None and raw.get("args") != args:
        _refuse_changed(path, raw.get("args", {}), args)
    run = _Run(path, args)
    if raw is None and not extra:
        return run
    listed = [ShardEntry(**s) for s in raw["shards"]] if raw else list(extra or [])
    by_stream: dict[tuple[str, str], list[ShardEntry]] = {}
    for e in listed:
        by_stream.setdefault((e.source, e.split), []).append(e)
    redo: set[str] = set()
    for (source, _), entries in by_stream.items():
        for e in sorted(entries, key=lambda e: e.prefix):
            if not shard_intact(out, e):
                log(f"lai-prep: {out / e.prefix}: incomplete or changed; redoing it and what follows")
                redo.add(source)
                break
            run.shards.append(e)
    if raw:   # (from a manifest, every source is re-read: cheap, and it recounts the read stats)
        run.sources_done = {k: v for k, v in raw.get("sources_done", {}).items() if k not in redo}
    return run


def _tokenize_source(spec: SourceSpec, opts: PrepOptions, run: _Run, streams: ShardStreams,
                     splitter: DocSplitter, entry: TokenizerEntry, dtype: np.dtype,
                     lo: int = 0, hi: int | None = None) -> ReadStats:
    skip = {s: 0 for s in SPLITS}
    for s in SPLITS:
        done = [e for e in run.shards if e.source == spec.name and e.split == s]
        skip[s] = sum(e.num_docs for e in done)
        streams.start(spec.name, s, len(done))
    stats = ReadStats()
    seen = {s: 0 for s in SPLITS}

    def todo() -> Iterator[tuple[tuple[str, int], str]]:
        for text, data in documents(spec, opts, stats, lo, hi):
            split = splitter.split_of(data)
            seen[split] += 1
            if seen[split] > skip[split]:
                yield (split, len(data)), text

    batches = (([m for m, _ in b], [t for _, t in b]) for b in batched(todo(), lambda item: item[0][1]))
    bar = Progress(f"{spec.name}", disable=None if opts.progress is None else not opts.progress)
    try:
        for metas, enc in encode_stream(batches, kind=entry.kind, path=opts.out / entry.path, dtype=dtype,
                                        workers=opts.workers):
            for (split, _), tokens in zip(metas, enc.documents()):
                streams.add(spec.name, split, tokens)
            bar.update(len(metas), int(enc.lengths.sum()), sum(n for _, n in metas))
    finally:
        bar.close()
    streams.finish(spec.name)
    return stats


def _source_stats(spec: SourceSpec, read: dict, shards: list[ShardEntry]) -> dict[str, int]:
    s = dict(read)
    for split in SPLITS:
        mine = [e for e in shards if e.source == spec.name and e.split == split]
        s[f"{split}_docs"] = sum(e.num_docs for e in mine)
        s[f"{split}_tokens"] = sum(e.num_tokens for e in mine)
    return s


def _sorted_shards(shards: list[ShardEntry], sources: list[SourceSpec]) -> list[ShardEntry]:
    order = {s.name: i for i, s in enumerate(sources)}
    return sorted(shards, key=lambda e: (order[e.source], SPLITS.index(e.split), e.prefix))


def _make_manifest(opts: PrepOptions, entry: TokenizerEntry, dtype: np.dtype, splitter: DocSplitter,
                   shards: list[ShardEntry], read: dict[str, dict], args: dict) -> Manifest:
    shards = _sorted_shards(shards, opts.sources)
    per_source = {s.name: _source_stats(s, read[s.name], shards) for s in opts.sources}
    stats = {"sources": per_source, "num_docs": sum(e.num_docs for e in shards),
             "num_tokens": sum(e.num_tokens for e in shards), "num_shards": len(shards)}
    return Manifest(tokenizer=entry, dtype=dtype.name, split=splitter.to_json(),
                    sources=[{"name": s.name, "spec": s.to_json()} for s in opts.sources],
                    shards=shards, args=args, stats=stats)


def _summary(m: Manifest, out: Path, seconds: float) -> str:
    st = m.stats
    rd = ReadStats()
    for s in st["sources"].values():
        rd.add(ReadStats(**{k: s[k] for k in ("docs", "empty", "bad_utf8", "bytes")}))
    tr = sum(s["train_tokens"] for s in st["sources"].values())
    return (f"lai-prep: {rd.docs:,} docs ({rd.empty:,} empty skipped, {rd.bad_utf8:,} with bad UTF-8), "
            f"{rd.bytes / 1e6:.1f} MB -> {st['num_tokens']:,} tokens (train {tr:,}, val {st['num_tokens'] - tr:,}) "
            f"in {st['num_shards']} shards, vocab {m.tokenizer.vocab_size} {m.dtype}, {seconds:.1f} s -> {out}")


def _tokenize_all(opts: PrepOptions, run: _Run, entry: TokenizerEntry, dtype: np.dtype,
                  ranges: dict[str, tuple[int, int | None]], require_nonempty: bool) -> dict[str, dict]:
    splitter = DocSplitter(opts.val_fraction, opts.seed)
    streams = ShardStreams(opts.out, dtype, opts.shard_tokens, run.add, part=opts.part)
    try:
        for spec in opts.sources:
            if spec.name in run.sources_done:
                continue
            lo, hi = ranges.get(spec.name, (0, None))
            stats = _tokenize_source(spec, opts, run, streams, splitter, entry, dtype, lo, hi)
            if require_nonempty:
                _require_nonempty(spec, stats)
            run.sources_done[spec.name] = asdict(stats)
            run.save()
    except BaseException:
        streams.discard()
        raise
    return run.sources_done


def run_prep(opts: PrepOptions) -> Manifest | None:
    """`lai-prep --source ... --out OUT` (single run, or part K of N with opts.part set)."""
    t0 = time.perf_counter()
    out = opts.out
    _check_options(opts)
    args = opts.output_args()
    if opts.part is not None:
        return _run_part(opts, args, t0)

    if opts.force:
        _wipe(out)
    previous: list[ShardEntry] = []
    if (out / MANIFEST_NAME).is_file():
        m = load_manifest(out)
        if m.args != args:
            _refuse_changed(out / MANIFEST_NAME, m.args, args)
        if all(shard_intact(out, e) for e in m.shards):
            log(f"lai-prep: {out} is complete and intact ({len(m.shards)} shards); nothing to do")
            return m
        previous = m.shards
        (out / MANIFEST_NAME).unlink()
    _clean_stale(out, None)
    run = _load_run(out / PROGRESS, args, out, previous)
    info_before = _read_json(out / TOKENIZER_INFO)
    entry, _ = ensure_tokenizer(opts)
    if info_before is None or info_before.get("entry") != asdict(entry):
        run = _Run(out / PROGRESS, args)               # a new tokenizer invalidates old shards
    dtype = choose_dtype(entry, opts.dtype, opts.out)
    run.save()
    read = _tokenize_all(opts, run, entry, dtype, {}, require_nonempty=True)
    m = _make_manifest(opts, entry, dtype, DocSplitter(opts.val_fraction, opts.seed), run.shards, read, args)
    m.save(out)
    (out / PROGRESS).unlink(missing_ok=True)
    log(_summary(m, out, time.perf_counter() - t0))
    return m


# ---------------------------------------------------------------------------------------------
# partitioned mode (Slurm arrays): tokenizer -> parts -> merge


def part_range(count: int, part: int, num_parts: int) -> tuple[int, int]:
    """Documents [lo, hi) of a source with `count` documents that part `part` of `num_parts` owns."""
    return count * part // num_parts, count * (part + 1) // num_parts


def run_tokenizer(opts: PrepOptions) -> TokenizerEntry:
    """`lai-prep tokenizer ...`: train/install the tokenizer and count documents for the parts."""
    t0 = time.perf_counter()
    _check_options(opts)
    out = opts.out
    plan_path = out / PARTS / PLAN
    plan = _read_json(plan_path)
    fresh = plan is None or plan.get("args") != opts.reading_args()
    entry, counts = ensure_tokenizer(opts, count_docs=fresh)
    if counts is not None:
        atomic_write_json(plan_path, {"args": opts.reading_args(), "doc_counts": counts})
    choose_dtype(entry, opts.dtype, opts.out)
    log(f"lai-prep: tokenizer {entry.kind} (vocab {entry.vocab_size}) ready in {out} "
        f"({time.perf_counter() - t0:.1f} s); now run the parts with --num-parts N --part K")
    return entry


def _part_file(out: Path, part: int, suffix: str = "json") -> Path:
    return out / PARTS / f"part-{part:05d}.{suffix}"


def _run_part(opts: PrepOptions, args: dict, t0: float) -> None:
    out, k, n = opts.out, opts.part, opts.num_parts
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--part: must be in [0, --num-parts) = [0, {n}), got {k}")
    if (out / MANIFEST_NAME).is_file():
        log(f"lai-prep: {out} is already merged (manifest.json exists); nothing to do for part {k}")
        return None
    plan = _read_json(out / PARTS / PLAN)
    info = _read_json(out / TOKENIZER_INFO)
    if plan is None or info is None:
        raise UserError(f"{out}: no tokenizer/plan yet; run `lai-prep tokenizer` with the same options first")
    if plan.get("args") != opts.reading_args():
        _refuse_changed(out / PARTS / PLAN, plan.get("args", {}), opts.reading_args())
    if info.get("args") != opts.tokenizer_args():
        _refuse_changed(out / TOKENIZER_INFO, info.get("args", {}), opts.tokenizer_args())
    entry = TokenizerEntry(**info["entry"])
    if tokenizer_sha256(out / entry.path) != entry.sha256:
        raise UserError(f"{out / entry.path}: tokenizer does not match {TOKENIZER_INFO} (checksum)")
    dtype = choose_dtype(entry, opts.dtype, opts.out)
    done = _read_json(_part_file(out, k))
    if done is not None and done.get("args") == args and all(
            shard_intact(out, ShardEntry(**s)) for s in done["shards"]):
        log(f"lai-prep: part {k} of {n} is already complete")
        return None
    if opts.force:
        _wipe_part(out, k)
    _clean_stale(out, k)
    run = _load_run(_part_file(out, k, "progress.json"), args, out)
    ranges = {s.name: part_range(plan["doc_counts"][s.name], k, n) for s in opts.sources}
    read = _tokenize_all(opts, run, entry, dtype, ranges, require_nonempty=False)
    atomic_write_json(_part_file(out, k), {"args": args, "part": k, "num_parts": n, "tokenizer": asdict(entry),
                                           "dtype": dtype.name, "split": DocSplitter(opts.val_fraction, opts.seed).to_json(),
                                           "sources": [s.to_json() for s in opts.sources],
                                           "shards": [asdict(s) for s in run.shards], "read": read})
    _part_file(out, k, "progress.json").unlink(missing_ok=True)
    ntok = sum(e.num_tokens for e in run.shards)
    log(f"lai-prep: part {k} of {n}: {ntok:,} tokens in {len(run.shards)} shards, "
        f"{time.perf_counter() - t0:.1f} s; run `lai-prep merge {out}` when all parts are done")
    return None


def run_merge(out: Path) -> Manifest:
    """`lai-prep merge OUT`: check all parts, rename their shards to the final names, write the manifest.
    Idempotent: a killed merge can be re-run."""
    t0 = time.perf_counter()
    out = Path(out)
    if (out / MANIFEST_NAME).is_file():
        log(f"lai-prep: {out} is already merged")
        return load_manifest(out)
    files = sorted((out / PARTS).glob("part-[0-9][0-9][0-9][0-9][0-9].json"))
    if not files:
        raise UserError(f"{out / PARTS}: no completed parts to merge")
    parts = [_read_json(f) for f in files]
    n = parts[0]["num_parts"]
    missing = sorted(set(range(n)) - {p["part"] for p in parts})
    if missing:
        raise UserError(f"{out / PARTS}: {len(missing)} of {n} parts not complete (missing: "
                        f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''})")
    for f, p in zip(files, parts):
        if p["args"] != parts[0]["args"]:
            _refuse_changed(f, parts[0]["args"], p["args"])
    parts.sort(key=lambda p: p["part"])
    first = parts[0]
    specs = [SourceSpec(**s) for s in first["sources"]]
    entry = TokenizerEntry(**first["tokenizer"])
    if any(p["tokenizer"] != first["tokenizer"] for p in parts) or not (out / entry.path).exists() \
            or tokenizer_sha256(out / entry.path) != entry.sha256:
        raise UserError(f"{out / entry.path}: the parts were not all made with this tokenizer; re-run the parts")
    shards: list[ShardEntry] = []
    read = {s.name: ReadStats() for s in specs}
    for spec in specs:
        for split in SPLITS:
            index = 0
            for p in parts:
                for e in sorted((ShardEntry(**s) for s in p["shards"] if s["source"] == spec.name
                                 and s["split"] == split), key=lambda e: e.prefix):
                    final = shard_prefix(spec.name, split, index)
                    index += 1
                    for path in (bin_path, idx_path):   # .bin first, .idx last (as the writer does)
                        src, dst = path(out / e.prefix), path(out / final)
                        if src.is_file():
                            src.replace(dst)
                        elif not dst.is_file():
                            raise UserError(f"{src}: shard of part {p['part']} is missing")
                    moved = ShardEntry(**{**asdict(e), "prefix": final})
                    verify_shard(out, moved, first["dtype"], entry.vocab_size)
                    shards.append(moved)
    for p in parts:
        for name, st in p["read"].items():
            read[name].add(ReadStats(**st))
    args = {k: v for k, v in first["args"].items() if k != "num_parts"}
    opts = PrepOptions(sources=specs, out=out)
    splitter = DocSplitter(first["split"]["val_fraction"], first["split"]["seed"])
    m = _make_manifest(opts, entry, np.dtype(first["dtype"]), splitter, shards,
                       {k: asdict(v) for k, v in read.items()}, args)
    m.stats["num_parts"] = n
    m.save(out)
    log(_summary(m, out, time.perf_counter() - t0))
    return m


def run_verify(out: Path) -> Manifest:
    """`lai-prep verify OUT`: check every shard against the byte format and the manifest."""
    out = Path(out)
    m = load_manifest(out)
    tok = out / m.tokenizer.path
    if not tok.exists():
        raise UserError(f"{tok}: tokenizer named by the manifest is missing")
    if tokenizer_sha256(tok) != m.tokenizer.sha256:
        raise UserError(f"{tok}: checksum does not match the manifest")
    for e in m.shards:
        verify_shard(out, e, m.dtype, m.tokenizer.vocab_size)
    log(f"lai-prep: {out}: {len(m.shards)} shards, {sum(e.num_tokens for e in m.shards):,} tokens, all intact")
    return m

"""The stages both lai-prep modes run: documents of a source, the tokenizer, tokenization into
shards with progress saved after every shard, and the manifest.

Progress (single run: OUT/progress.json; a part: OUT/parts/part-KKKKK.progress.json) lists the
completed shards with their checksums and the finished sources. Re-running the same command
resumes: listed shards whose checksums match are kept, the document stream is re-read (cheap) and
documents already in those shards are skipped, so a killed run followed by a re-run writes the same
bytes as an uninterrupted run. Documents are tokenized in input order and shard boundaries depend
only on the stream, so the worker count never changes the output.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data_prep.groups import GroupModel, Reservoir, fit_groups
from data_prep.options import PrepOptions, changed, log, read_optional
from data_prep.shards import ShardStreams, shard_intact
from data_prep.progress import SourceBar, elapsed
from data_prep.sources.cursor import Cursor, ReadStats
from data_prep.sources.discover import origin_files
from data_prep.sources.read import iter_documents
from data_prep.sources.spec import SourceSpec
from data_prep.split import SPLITS, DocSplitter
from data_prep.tokenize import batched, encode_stream
from data_prep.tokenizer import (install_tokenizer, sample_sentences, tokenizer_entry,
                                 train_sentencepiece, training_sentences)
from pipeline.errors import UserError
from pipeline.format.indexed import IndexedReader, bin_path, idx_path, token_dtype
from pipeline.format.manifest import Manifest, ShardEntry, TokenizerEntry, group_label
from pipeline.format.provenance import doc_hash, docs_path, read_docs, record
from pipeline.format.tokenizer import SPM_FILE, tokenizer_sha256
from pipeline.fsutil import atomic_write_json

TOKENIZER_INFO = "tokenizer-info.json"


def documents(spec: SourceSpec, opts: PrepOptions, stats: ReadStats, lo: int = 0,
              hi: int | None = None, cursor: Cursor | None = None
              ) -> Iterator[tuple[str, bytes, tuple[int, int, int]]]:
    """Non-empty documents (text, UTF-8 bytes, provenance (file, pos, text hash)) with stream
    index in [lo, hi), honoring --max-docs / --max-bytes and leaving out what --exclude lists;
    counts documents, empty and excluded ones, invalid UTF-8 and bytes of the range into
    `stats`. `cursor` follows the reader (progress)."""
    reader = ReadStats()
    cur = cursor if cursor is not None else Cursor()
    bad_seen, files = 0, None
    for i, text in enumerate(iter_documents(spec, strict=opts.strict, stats=reader, cursor=cur)):
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
        h = doc_hash(data)
        if h in opts.drop:
            files = origin_files(spec) if files is None else files
            if _excluded(opts, {"spec": spec.to_json(), "files": files}, h, cur, stats):
                continue
        stats.bytes += len(data)
        yield text, data, (cur.file, cur.pos, h)


def _excluded(opts: PrepOptions, source: dict, h: int, cur: Cursor, stats: ReadStats) -> bool:
    """Whether a document whose text a keep/drop list marks drop is left out (--exclude-match),
    counted into `stats` (a copy: the text at a record the list does not name). `source`: the
    manifest's entry ({"spec", "files"}) that records are written from."""
    copy = (h, record(source, cur.file, cur.pos)) not in opts.drop_records
    if copy and opts.exclude_match == "record":
        return False
    stats.excluded += 1
    stats.excluded_copies += copy
    return True


def check_nonempty(spec: SourceSpec, stats: ReadStats) -> None:
    if stats.docs == stats.empty + stats.excluded:
        excluded = f", {stats.excluded} excluded by --exclude" if stats.excluded else ""
        raise UserError(f"{spec.path or spec.kind}: source '{spec.name}' has no non-empty documents "
                        f"({stats.docs} read, {stats.empty} empty{excluded})")


def count_docs(opts: PrepOptions) -> dict[str, int]:
    """Documents per source (empty ones included), the unit parts are cut in."""
    counts = {}
    for spec in opts.sources:
        stats = ReadStats()
        for _ in documents(spec, opts, stats):
            pass
        check_nonempty(spec, stats)
        counts[spec.name] = stats.docs
    return counts


def ensure_tokenizer(opts: PrepOptions, *, with_counts: bool = False) -> tuple[TokenizerEntry, dict[str, int] | None]:
    """Train or install the tokenizer in OUT unless OUT already has one made with the same args.
    With with_counts, also returns the number of documents of each source (for partitioning)."""
    out = opts.out
    info_path = out / TOKENIZER_INFO
    info = read_optional(info_path)
    if info and info.get("args") == opts.tokenizer_args():
        entry = TokenizerEntry(**info["entry"])
        if (out / entry.path).exists() and tokenizer_sha256(out / entry.path) == entry.sha256:
            return entry, (count_docs(opts) if with_counts else None)
    info_path.unlink(missing_ok=True)
    counts: dict[str, int] | None = None
    if opts.tokenizer == "train":
        cfg = opts.train_config()
        t0 = time.perf_counter()
        seen: dict[str, int] = {}           # filled as corpus() reads
        counts = seen

        def corpus() -> Iterator[str]:
            for spec in opts.sources:
                stats, cursor = ReadStats(), Cursor()
                bar = SourceBar(f"tokenizer: reading {spec.name}", cursor, disable=opts.bar_off,
                                docs_limit=opts.max_docs)
                try:
                    for text, _, _ in documents(spec, opts, stats, cursor=cursor):
                        bar.update(1)
                        yield text
                finally:
                    bar.close()
                check_nonempty(spec, stats)
                seen[spec.name] = stats.docs

        sentences = sample_sentences(training_sentences(corpus()), cfg.max_sentences, cfg.seed)
        log(f"lai-prep: training a {cfg.vocab_size}-piece {cfg.model_type} sentencepiece model on "
            f"{len(sentences):,} lines ({cfg.num_threads} threads)")
        with elapsed("tokenizer: training sentencepiece", disable=opts.bar_off):
            train_sentencepiece(sentences, out / SPM_FILE, cfg)
        log(f"lai-prep: tokenizer trained in {time.perf_counter() - t0:.1f} s -> {out / SPM_FILE}")
        kind = "sentencepiece"
    else:
        kind = install_tokenizer(opts.tokenizer, out)
        if with_counts:
            counts = count_docs(opts)
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


@dataclass
class Progress:
    """Progress of one single run or one part, saved after every completed shard."""
    path: Path
    args: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    sources_done: dict[str, dict] = field(default_factory=dict)
    failed: bool = False             # the run ended on an error (not killed or interrupted)

    def save(self) -> None:
        atomic_write_json(self.path, {"args": self.args, "shards": [asdict(s) for s in self.shards],
                                      "sources_done": self.sources_done, "failed": self.failed})

    def add(self, entry: ShardEntry) -> None:
        self.shards.append(entry)
        self.save()


def load_progress(path: Path, args: dict, out: Path, extra: list[ShardEntry] | None = None) -> Progress:
    """The saved progress (or `extra`, a broken manifest's shards), keeping per (source, split)
    only the leading shards that are intact. Progress made with other arguments is dropped (with
    its shards) when that run failed or completed no shard; a run that was killed after completing
    shards is refused in one line (its shards resume with its own arguments)."""
    raw = read_optional(path)
    if raw is not None and raw.get("args") != args:
        old = [ShardEntry(**s) for s in raw.get("shards", [])]
        diff = changed(raw.get("args", {}), args)
        if old and not raw.get("failed"):
            raise UserError(f"{path}: {len(old)} shard(s) of an interrupted run made with other "
                            f"arguments ({diff}) would be lost; re-run with its arguments to resume "
                            "it, pass --force to start over, or use another --out")
        for e in old:
            for f in (bin_path(out / e.prefix), idx_path(out / e.prefix), docs_path(out / e.prefix)):
                f.unlink(missing_ok=True)
        log(f"lai-prep: {path}: the earlier run {'failed' if raw.get('failed') else 'completed no shard'}"
            f" with other arguments ({diff}); starting over")
        path.unlink()
        raw = None
    run = Progress(path, args)
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


GROUPS_FILE = "groups.json"


def ensure_groups(opts: PrepOptions) -> dict[str, GroupModel]:
    """--groups K: each source's fitted groups (OUT/groups.json, reused when made with the same
    documents, K and seed; else fitted on each source's bounded sample and saved)."""
    if not opts.groups:
        return {}
    path = opts.out / GROUPS_FILE
    args = {**opts.reading_args(), "groups": opts.groups, "seed": opts.seed}
    if (read_optional(path) or {}).get("args") == args:
        return saved_groups(opts.out)
    t0 = time.perf_counter()
    models = {}
    for spec in opts.sources:
        sample = Reservoir(opts.seed)
        for text, _, origin in documents(spec, opts, ReadStats()):
            sample.offer(text, origin[2])
        models[spec.name] = fit_groups(sample.texts(), opts.groups, opts.seed)
    atomic_write_json(path, {"args": args, "sources": {n: m.to_json() for n, m in models.items()}})
    log(f"lai-prep: {opts.groups} groups per source fitted in {time.perf_counter() - t0:.1f} s: "
        + "; ".join(group_label(n, g, t) for n, m in models.items() for g, t in enumerate(m.terms)))
    return models


def saved_groups(out: Path) -> dict[str, GroupModel]:
    """The groups OUT/groups.json holds per source."""
    saved = read_optional(out / GROUPS_FILE)
    if saved is None:
        raise UserError(f"{out / GROUPS_FILE}: missing (lai-prep --groups fits it before "
                        "tokenizing; run `lai-prep tokenizer` or the prep again)")
    return {n: GroupModel.from_json(g) for n, g in saved["sources"].items()}


def group_stats(out: Path, models: dict[str, GroupModel], shards: list[ShardEntry],
                seed: int) -> dict[str, dict]:
    """The manifest's `groups`: per source K, seed, top terms, train documents and tokens per group."""
    stats = {}
    for name, m in models.items():
        docs, tokens = np.zeros(m.k, dtype=np.int64), np.zeros(m.k, dtype=np.int64)
        for e in shards:
            if e.source == name and e.split == "train":
                rows = read_docs(out / e.prefix)
                assert rows is not None             # the prep wrote them with the shards
                g = rows["group"]
                docs += np.bincount(g, minlength=m.k)
                tokens += np.bincount(g, weights=IndexedReader(out / e.prefix).lengths,
                                      minlength=m.k).astype(np.int64)
        stats[name] = {"k": m.k, "seed": seed, "terms": m.terms, "train_docs": docs.tolist(),
                       "train_tokens": tokens.tolist()}
    return stats


def tokenize_source(spec: SourceSpec, opts: PrepOptions, run: Progress, streams: ShardStreams,
                     splitter: DocSplitter, entry: TokenizerEntry, dtype: np.dtype,
                     lo: int = 0, hi: int | None = None, groups: GroupModel | None = None) -> ReadStats:
    skip = {s: 0 for s in SPLITS}
    for s in SPLITS:
        done = [e for e in run.shards if e.source == spec.name and e.split == s]
        skip[s] = sum(e.num_docs for e in done)
        streams.start(spec.name, s, len(done))
    stats, cursor = ReadStats(), Cursor()
    seen = {s: 0 for s in SPLITS}

    def todo() -> Iterator[tuple[tuple[str, int, tuple[int, int, int]], str]]:
        for text, data, origin in documents(spec, opts, stats, lo, hi, cursor):
            split = splitter.split_of(data)
            seen[split] += 1
            if seen[split] > skip[split]:
                yield (split, len(data), origin), text

    batches = (([m for m, _ in b], [t for _, t in b]) for b in batched(todo(), lambda item: item[0][1]))
    bar = SourceBar(spec.name, cursor, disable=opts.bar_off,
                    docs_total=None if hi is None else hi - lo, docs_limit=opts.max_docs)
    try:
        for metas, enc in encode_stream(batches, kind=entry.kind, path=opts.out / entry.path, dtype=dtype,
                                        workers=opts.workers, groups=groups):
            tags = [()] * len(metas) if enc.groups is None else [(int(g),) for g in enc.groups]
            for (split, _, origin), tokens, tag in zip(metas, enc.documents(), tags):
                streams.add(spec.name, split, tokens, origin + tag)
            bar.update(len(metas), int(enc.lengths.sum()))
    finally:
        bar.close()
    streams.finish(spec.name)
    return stats


def source_stats(spec: SourceSpec, read: dict, shards: list[ShardEntry]) -> dict[str, int]:
    s = dict(read)
    for split in SPLITS:
        mine = [e for e in shards if e.source == spec.name and e.split == split]
        s[f"{split}_docs"] = sum(e.num_docs for e in mine)
        s[f"{split}_tokens"] = sum(e.num_tokens for e in mine)
    return s


def sorted_shards(shards: list[ShardEntry], sources: list[SourceSpec]) -> list[ShardEntry]:
    order = {s.name: i for i, s in enumerate(sources)}
    return sorted(shards, key=lambda e: (order[e.source], SPLITS.index(e.split), e.prefix))


def make_manifest(opts: PrepOptions, entry: TokenizerEntry, dtype: np.dtype, splitter: DocSplitter,
                   shards: list[ShardEntry], read: dict[str, dict], args: dict) -> Manifest:
    shards = sorted_shards(shards, opts.sources)
    per_source = {s.name: source_stats(s, read[s.name], shards) for s in opts.sources}
    stats = {"sources": per_source, "num_docs": sum(e.num_docs for e in shards),
             "num_tokens": sum(e.num_tokens for e in shards), "num_shards": len(shards)}
    groups = group_stats(opts.out, saved_groups(opts.out), shards, args["seed"]) if args.get("groups") else {}
    return Manifest(tokenizer=entry, dtype=dtype.name, split=splitter.to_json(),
                    sources=[{"name": s.name, "spec": s.to_json(), "files": origin_files(s)}
                             for s in opts.sources],
                    shards=shards, args=args, stats=stats, groups=groups)


def summary(m: Manifest, out: Path, seconds: float) -> str:
    """The closing line; with --exclude it counts the documents excluded (and marked drop), after
    a warning line when the list matched no document."""
    st = m.stats
    rd = ReadStats()
    for s in st["sources"].values():
        rd.add(ReadStats(**{f.name: s.get(f.name, 0) for f in fields(ReadStats)}))
    tr = sum(s["train_tokens"] for s in st["sources"].values())
    ex = m.args.get("exclude")
    copies = (f"; {rd.excluded_copies:,} of them copies of a marked document's text elsewhere"
              if rd.excluded_copies else "")
    excluded = (f", {rd.excluded:,} excluded by --exclude ({ex['documents']:,} marked drop{copies})"
                if ex else "")
    warning = (f"warning: --exclude {ex['list']}: none of its {ex['documents']:,} 'drop' "
               "documents is in these sources; nothing was excluded (a list made on other "
               "data?)\n" if ex and not rd.excluded else "")
    line = (f"lai-prep: {rd.docs:,} docs ({rd.empty:,} empty skipped{excluded}, {rd.bad_utf8:,} with bad UTF-8), "
            f"{rd.bytes / 1e6:.1f} MB -> {st['num_tokens']:,} tokens (train {tr:,}, val {st['num_tokens'] - tr:,}) "
            f"in {st['num_shards']} shards, vocab {m.tokenizer.vocab_size} {m.dtype}, {seconds:.1f} s -> {out}")
    return warning + line


def tokenize_all(opts: PrepOptions, run: Progress, entry: TokenizerEntry, dtype: np.dtype,
                  ranges: dict[str, tuple[int, int | None]], require_nonempty: bool) -> dict[str, dict]:
    splitter = DocSplitter(opts.val_fraction, opts.seed)
    models = ensure_groups(opts)
    streams = ShardStreams(opts.out, dtype, opts.shard_tokens, run.add, part=opts.part)
    try:
        for spec in opts.sources:
            if spec.name in run.sources_done:
                continue
            lo, hi = ranges.get(spec.name, (0, None))
            stats = tokenize_source(spec, opts, run, streams, splitter, entry, dtype, lo, hi,
                                    models.get(spec.name))
            if require_nonempty:
                check_nonempty(spec, stats)
            run.sources_done[spec.name] = asdict(stats)
            run.save()
    except BaseException as e:
        streams.discard()
        if isinstance(e, Exception):          # an error, not a kill or Ctrl-C: see load_progress
            run.failed = True
            run.save()
        raise
    return run.sources_done

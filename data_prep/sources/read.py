"""The documents of a SourceSpec: iter_documents picks the reader for its kind; check_source
validates a source cheaply before anything is written."""
from __future__ import annotations

import functools
from typing import Iterator

from data_prep.sources.cursor import Cursor, ReadStats
from data_prep.sources.discover import source_files
from data_prep.sources.files import Parse, file_docs
from data_prep.sources.hf import hf_docs
from data_prep.sources.parquet import parquet_docs, parquet_file
from data_prep.sources.records import json_records, jsonl_records
from data_prep.sources.spec import SourceSpec
from data_prep.sources.text import TEXT_PARSERS


def check_source(spec: SourceSpec) -> None:
    """Cheap up-front validation (before anything is written): files exist, Parquet files open and
    have the text column. Format errors inside JSON/text files surface while reading."""
    if spec.kind == "hf":
        return
    files = source_files(spec)
    if spec.kind == "parquet":
        for f in files:
            parquet_file(f, spec.field)


def _byte_parser(spec: SourceSpec) -> Parse:
    if spec.kind == "stdlib":
        return TEXT_PARSERS["file"]
    if spec.kind == "text":
        return TEXT_PARSERS[spec.mode]
    records = jsonl_records if spec.kind == "jsonl" else json_records
    return functools.partial(records, field=spec.field)


def iter_documents(spec: SourceSpec, *, strict: bool = False, stats: ReadStats | None = None,
                   cursor: Cursor | None = None) -> Iterator[str]:
    """All documents of `spec` in order (empty ones included; the caller skips them).
    Counts invalid UTF-8 into `stats.bad_utf8`; `cursor` follows the reader (see Cursor).
    A file source's files are listed (and missing ones refused) at the call; the rest is lazy."""
    stats = stats if stats is not None else ReadStats()
    cur = cursor if cursor is not None else Cursor()
    if spec.kind == "hf":
        return hf_docs(spec, cur)
    files = source_files(spec)
    if spec.kind == "parquet":
        return parquet_docs(files, spec.field, cur)
    if not any(f.name.endswith(".gz") for f in files):
        cur.total_bytes = sum(f.stat().st_size for f in files)
    return file_docs(files, _byte_parser(spec), strict=strict, stats=stats, cur=cur)

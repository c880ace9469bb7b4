"""What a reader reports while it reads (ReadStats, Cursor), and `located`: the one read loop that
every reader runs in. A reader only parses: it turns one unit (a file, a Parquet file, a dataset)
into (pos, text) pairs; `located` walks the units in order and moves the Cursor."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator, TypeVar

Unit = TypeVar("Unit")


@dataclass
class ReadStats:
    docs: int = 0        # documents read (including empty ones)
    empty: int = 0       # documents skipped because they are empty or whitespace only
    bad_utf8: int = 0    # documents with invalid UTF-8 (replaced by U+FFFD)
    bytes: int = 0       # UTF-8 bytes of the non-empty documents
    excluded: int = 0    # documents dropped by --exclude
    excluded_copies: int = 0   # of those, copies of a marked document's text found elsewhere

    def add(self, other: "ReadStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Cursor:
    """Where a reader is, updated before each document is yielded. `file` (index into
    source_files(spec); 0 for hf) and `pos` (1-based line: jsonl, text line, text blank = the
    paragraph's first line; record index: json; row: parquet, hf; 0: a whole file) locate the
    document just yielded. `bytes_read` counts input bytes consumed (files; after gzip
    decompression); `total_bytes` (files, none compressed) or `total_docs` (parquet,
    non-streaming hf) is the source's size when it is known cheaply, else both stay None."""
    file: int = 0
    pos: int = 0
    bytes_read: int = 0
    total_bytes: int | None = None
    total_docs: int | None = None


def located(units: Iterable[Unit], parse: Callable[[Unit], Iterable[tuple[int, str]]],
            cur: Cursor) -> Iterator[str]:
    """The documents `parse` finds in each of `units` in turn, with cur.file (the unit's index)
    and cur.pos (the pos `parse` gave) set before each is yielded."""
    for i, unit in enumerate(units):
        cur.file = i
        for pos, text in parse(unit):
            cur.pos = pos
            yield text

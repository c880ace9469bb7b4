"""Byte files for the text and JSON readers: opened (gzip by a `.gz` name), read with each byte
counted into the Cursor, decoded as UTF-8 with replacements counted (or refused with --strict).
Open and read failures are UserErrors naming the file."""
from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Callable, Iterable, Iterator

from data_prep.sources.cursor import Cursor, ReadStats, located
from pipeline.errors import UserError

Decode = Callable[[bytes, str], str]   # (data, where: file or file:line) -> text


class Counted:
    """An open binary file whose reads count into `cursor.bytes_read`: iterate it for its lines
    (line ends kept) or `read()` it whole."""

    def __init__(self, fh: io.BufferedIOBase, cursor: Cursor):
        self.fh, self.cursor = fh, cursor

    def __iter__(self) -> Iterator[bytes]:
        for raw in self.fh:
            self.cursor.bytes_read += len(raw)
            yield raw

    def read(self) -> bytes:
        data = self.fh.read()
        self.cursor.bytes_read += len(data)
        return data


Parse = Callable[[Path, Counted, Decode], Iterable[tuple[int, str]]]   # -> (pos, text)


def utf8_decoder(strict: bool, stats: ReadStats) -> Decode:
    """Decode UTF-8; invalid bytes are replaced and the document counted into stats.bad_utf8, or
    with `strict` refused: UserError "<where>: invalid UTF-8 at byte N (--strict)"."""
    def decode(data: bytes, where: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            if strict:
                raise UserError(f"{where}: invalid UTF-8 at byte {e.start} (--strict)") from None
            stats.bad_utf8 += 1
            return data.decode("utf-8", errors="replace")
    return decode


def _open(path: Path) -> io.BufferedIOBase:
    """`path` for binary reading, decompressed when its name ends in .gz."""
    try:
        return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror or e})") from None


def _read_file(path: Path, parse: Parse, decode: Decode, cur: Cursor) -> Iterator[tuple[int, str]]:
    """`parse` run on the open file `path`; a failing read is "<path>: cannot read (...)"."""
    try:
        with _open(path) as fh:
            yield from parse(path, Counted(fh, cur), decode)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def file_docs(files: list[Path], parse: Parse, *, strict: bool, stats: ReadStats,
              cur: Cursor) -> Iterator[str]:
    """The documents `parse` finds in `files`, in order (see cursor.located)."""
    decode = utf8_decoder(strict, stats)
    return located(files, lambda f: _read_file(f, parse, decode, cur), cur)

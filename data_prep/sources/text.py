"""Text parsers (kinds text and stdlib): a document per file, per line (line end dropped), or per
paragraph (lines joined by "\\n" up to a blank line). Each yields (pos, text) for files.file_docs:
pos is 0 for a whole file, the line number for a line, a paragraph's first line number."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data_prep.sources.files import Counted, Decode, Parse


def _whole(path: Path, fh: Counted, decode: Decode) -> Iterator[tuple[int, str]]:
    yield 0, decode(fh.read(), str(path))


def _lines(path: Path, fh: Counted, decode: Decode) -> Iterator[tuple[int, str]]:
    for lineno, raw in enumerate(fh, 1):
        yield lineno, decode(raw.rstrip(b"\r\n"), f"{path}:{lineno}")


def _paragraphs(path: Path, fh: Counted, decode: Decode) -> Iterator[tuple[int, str]]:
    """A paragraph is named in errors by the blank line that ends it (the file at its end)."""
    para: list[bytes] = []
    start = 0
    for lineno, raw in enumerate(fh, 1):
        line = raw.rstrip(b"\r\n")
        if line.strip():
            start = start or lineno
            para.append(line)
        elif para:
            yield start, decode(b"\n".join(para), f"{path}:{lineno}")
            para, start = [], 0
    if para:
        yield start, decode(b"\n".join(para), str(path))


TEXT_PARSERS: dict[str, Parse] = {"file": _whole, "line": _lines, "blank": _paragraphs}

"""JSON record parsers (kinds jsonl and json): the text field of each record. jsonl yields
(line number, text) and skips blank lines; json reads a file's array and yields (record index,
text). A record may also be a bare string; a null field is an empty document. Malformed JSON, a
missing field or a non-string value is a UserError naming the file and line or record."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from data_prep.sources.files import Counted, Decode
from pipeline.errors import UserError


def record_text(rec: Any, field: str, where: str) -> str:
    """The text of one record: `rec` itself if a string, else its `field`."""
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if field not in rec:
        raise UserError(f"{where}: missing text field '{field}' (fields: {', '.join(map(str, rec)) or 'none'})")
    value = rec[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: text field '{field}' is {type(value).__name__}, not a string")
    return value


def _json_problem(e: json.JSONDecodeError) -> str:
    """json's message ready for "at <position>" (some of its messages already end in "at")."""
    return f"{e.msg.removesuffix(' at')} at"


def jsonl_records(path: Path, fh: Counted, decode: Decode, *, field: str) -> Iterator[tuple[int, str]]:
    for lineno, raw in enumerate(fh, 1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        line = decode(raw, where)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({_json_problem(e)} column {e.colno})") from None
        yield lineno, record_text(rec, field, where)


def json_records(path: Path, fh: Counted, decode: Decode, *, field: str) -> Iterator[tuple[int, str]]:
    text = decode(fh.read(), str(path))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({_json_problem(e)} line {e.lineno} column {e.colno})") from None
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    for j, rec in enumerate(records):
        yield j, record_text(rec, field, f"{path}: record {j}")

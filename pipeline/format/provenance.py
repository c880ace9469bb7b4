"""Where each prepared document came from, and the keep/drop list a valuation turns into.

Per shard, `<prefix>.docs.npy` next to its .bin/.idx (written by lai-prep; its sha256 is the
manifest's `ShardEntry.docs_sha256`): one row per document of the shard, in shard order,

    file  int32   index into the source's "files" in the manifest (paths, or the hf dataset)
    pos   int64   where in that file: 1-based line (jsonl; text line; text blank: the
                  paragraph's first line), record index (json array), row (parquet; hf: row
                  of the split), 0 (one document per file: text file mode, stdlib)
    hash  uint64  `doc_hash` of the document's UTF-8 text: equal texts, equal hashes

(20 bytes per document). Data prepared with `lai-prep --groups K` adds

    group int16   the document's group within its source (data_prep.groups), 0..K-1

(DOCS_GROUPED, 22 bytes). `record()` turns a row into a link a person can open, e.g.
"/data/web/part-3.jsonl:1042" or "/data/code/a.parquet row 17".

The keep/drop list: `lai-report` writes RUN/report/keep_drop.csv (KEEP_DROP_FIELDS, one row per
ranked document with its decision) and `lai-prep --exclude LIST` drops, while it reads its
sources, every document whose text hash is listed with decision "drop": exact duplicates of it
included, whatever file, source or position it has in the new run (`--exclude-match text`, the
default; lai-prep counts the copies), or only the listed records themselves, same text at the
same file and position (`--exclude-match record`).
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write

DOCS_SUFFIX = ".docs.npy"
DOCS = np.dtype([("file", "<i4"), ("pos", "<i8"), ("hash", "<u8")])
KEEP_DROP_FIELDS = ["decision", "confidence", "value_step", "measured", "tokens", "source",
                    "shard", "doc", "record", "doc_hash"]
DOCS_GROUPED = np.dtype(DOCS.descr + [("group", "<i2")])
_HASH_KEY = b"lai-doc"


def doc_hash(data: bytes) -> int:
    """64-bit hash of a document's UTF-8 bytes (blake2b, keyed; not the split's key)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=_HASH_KEY).digest(), "little")


def hash_hex(h: int) -> str:
    return f"{int(h):016x}"


def docs_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}{DOCS_SUFFIX}")


def write_docs(prefix: str | Path, rows: np.ndarray) -> Path:
    """The sidecar of shard `prefix` (rows of dtype DOCS or DOCS_GROUPED), written atomically."""
    path = docs_path(prefix)
    with atomic_write(path, "wb") as f:
        np.save(f, rows, allow_pickle=False)
    return path


def read_docs(prefix: str | Path) -> np.ndarray | None:
    """The sidecar rows of shard `prefix`, or None when the shard has none (prepared before
    provenance was recorded, or not by lai-prep)."""
    path = docs_path(prefix)
    if not path.is_file():
        return None
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable document provenance ({e})") from None
    if rows.dtype not in (DOCS, DOCS_GROUPED):
        raise UserError(f"{path}: dtype {rows.dtype}, expected {DOCS} or {DOCS_GROUPED}")
    return rows


def record(source: dict, file: int, pos: int) -> str:
    """A link to the original record, from the manifest's source entry ({"name", "spec",
    "files"}) and a sidecar row's file and pos."""
    files = source.get("files") or []
    name = files[file] if 0 <= file < len(files) else f"file #{file}"
    spec = source.get("spec", {})
    kind = spec.get("kind")
    if kind == "parquet" or kind == "hf":
        return f"{name} row {pos}"
    if kind == "json":
        return f"{name} record {pos}"
    if kind in ("jsonl", "text") and pos > 0:
        return f"{name}:{pos}"
    return name


def read_drop_list(path: str | Path) -> set[tuple[int, str]]:
    """(text hash, record) of each document a keep/drop list marks "drop" (record "" where the
    list has none; UserError naming the file if it is not a keep/drop list)."""
    p = Path(path)
    try:
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"decision", "doc_hash"} - set(reader.fieldnames or [])
            if missing:
                raise UserError(f"{p}: not a keep/drop list (no {', '.join(sorted(missing))} "
                                "column; lai-report writes RUN/report/keep_drop.csv)")
            drop = set()
            for i, row in enumerate(reader, 2):
                if row["decision"] not in ("keep", "drop"):
                    raise UserError(f"{p}:{i}: decision must be keep or drop, got "
                                    f"{row['decision']!r}")
                if row["decision"] == "drop":
                    if not row["doc_hash"]:
                        raise UserError(f"{p}:{i}: no doc_hash (the run's data was prepared "
                                        "before lai-prep recorded provenance; prepare it again)")
                    drop.add((int(row["doc_hash"], 16), row.get("record") or ""))
            return drop
    except OSError as e:
        raise UserError(f"{p}: cannot read the keep/drop list ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"{p}: malformed keep/drop list ({e})") from None

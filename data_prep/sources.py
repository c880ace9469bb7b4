"""Document readers. A source is a named, deterministic stream of documents (`str`).

Sources are written as `--source` strings (grammar below) or as entries of a YAML/JSON list
(`--sources FILE`: strings in the same grammar, or mappings with the SourceSpec fields):

    [NAME=]KIND[:ARGS][,KEY=VALUE...]
    stdlib                          .py files of the running Python's standard library
    text:PATH[:file|line|blank]     one document per file (default), per line, or per
                                    blank-line-separated paragraph
    jsonl:PATH                      one JSON object per line, text in field `field`
    json:PATH                       a JSON array of objects (or of strings)
    parquet:PATH                    a Parquet column `field`
    hf:NAME[:CONFIG]:SPLIT          `datasets.load_dataset(NAME, CONFIG, split=SPLIT)`

PATH is a file, a directory (searched recursively for the kind's extensions, `.gz` allowed for
text/jsonl/json) or a glob. KEY=VALUE options: field=, mode=, streaming=1, data_files=GLOB (hf),
tests=1 (stdlib: include test directories). NAME (default: derived from KIND/PATH) names the
source in the manifest and in shard file names.

Readers decode UTF-8 themselves: invalid bytes are replaced and counted (`ReadStats.bad_utf8`,
per document) or, with `strict=True`, raise UserError naming the file and byte offset. Malformed
input raises UserError (one line, names the file and record). A `Cursor` follows the reader: where
the document just yielded came from (file and line / record / row: its provenance, see
pipeline.format.provenance) and how much of the source is read (progress bars).

`hf:PATH` with a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` reads it
with `datasets.load_from_disk` (SPLIT picks the split of a DatasetDict).
"""
from __future__ import annotations

import functools
import glob
import gzip
import io
import json
import os
import re
import sysconfig
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import UserError
from pipeline.values import to_bool

KINDS = ("stdlib", "text", "jsonl", "json", "parquet", "hf")
TEXT_MODES = ("file", "line", "blank")
DIR_EXTENSIONS = {"text": (".txt", ".md", ".txt.gz"), "jsonl": (".jsonl", ".ndjson", ".jsonl.gz"),
                  "json": (".json", ".json.gz"), "parquet": (".parquet",)}
STDLIB_TEST_DIRS = {"test", "tests", "idle_test"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    path: str = ""                 # file/dir/glob; for hf the dataset name or local path
    mode: str = "file"             # text: file | line | blank
    field: str = "text"            # jsonl / json / parquet / hf
    config: str | None = None      # hf
    split: str = "train"           # hf
    data_files: str | None = None  # hf
    streaming: bool = False        # hf
    tests: bool = False            # stdlib: include test directories

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    document just yielded. `bytes_read` counts raw input bytes consumed; `total_bytes` (files,
    none compressed) or `total_docs` (parquet, non-streaming hf) is the source's size when it is
    known cheaply, else both stay None."""
    file: int = 0
    pos: int = 0
    bytes_read: int = 0
    total_bytes: int | None = None
    total_docs: int | None = None


def _flag(value: str, where: str) -> bool:
    try:
        return to_bool(value)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def _default_name(kind: str, path: str) -> str:
    if kind == "stdlib":
        return "stdlib"
    base = path.rstrip("/").split("/")[-1]
    if any(c in base for c in "*?["):
        base = Path(path.split("*")[0]).name or kind
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".parquet", ".txt", ".md"):
        base = base.removesuffix(ext)
    return re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or kind


def make_spec(d: dict[str, Any], *, default_field: str = "text", where: str = "--source") -> SourceSpec:
    """Validate a mapping of SourceSpec fields (name optional) into a SourceSpec."""
    known = {f.name for f in fields(SourceSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"{where}: unknown source option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    kind = d.get("kind")
    if kind not in KINDS:
        raise UserError(f"{where}: unknown source kind {kind!r} (one of {', '.join(KINDS)})")
    d = dict(d)
    for key in ("streaming", "tests"):
        if key in d:
            d[key] = _flag(d[key], f"{where}: {key}")
    path = str(d.get("path") or "")
    if kind != "stdlib" and not path:
        raise UserError(f"{where}: source kind '{kind}' needs a path or dataset name")
    if d.get("mode", "file") not in TEXT_MODES:
        raise UserError(f"{where}: text mode must be one of {', '.join(TEXT_MODES)}, got {d['mode']!r}")
    d.setdefault("field", default_field)
    d.setdefault("name", _default_name(kind, path))
    if not _NAME_RE.match(str(d["name"])):
        raise UserError(f"{where}: source name {d['name']!r} must be letters, digits or '_'")
    return SourceSpec(**d)


def parse_source(text: str, *, default_field: str = "text") -> SourceSpec:
    """Parse one `--source` string (see the module docstring for the grammar)."""
    where = f"--source {text}"
    head, *opts = re.split(r",(?=[A-Za-z_]+=)", text)
    d: dict[str, Any] = {}
    m = re.match(r"^([A-Za-z0-9_]+)=(.*)$", head)
    if m:
        d["name"], head = m.group(1), m.group(2)
    kind, _, rest = head.partition(":")
    d["kind"] = kind
    if kind == "text" and rest:
        path, _, mode = rest.rpartition(":")
        if path and mode in TEXT_MODES:
            d["mode"], rest = mode, path
    if kind == "hf" and rest:
        parts = rest.split(":")
        if len(parts) > 3:
            raise UserError(f"{where}: expected hf:NAME[:CONFIG]:SPLIT")
        d["path"] = parts[0]
        if len(parts) >= 2:
            d["split"] = parts[-1]
        if len(parts) == 3:
            d["config"] = parts[1] or None
    elif rest:
        d["path"] = rest
    for opt in opts:
        key, _, value = opt.partition("=")
        d[key] = value
    return make_spec(d, default_field=default_field, where=where)


def load_source_list(path: str | Path, *, default_field: str = "text") -> list[SourceSpec]:
    """Read a YAML or JSON list of sources (spec strings or mappings of SourceSpec fields)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such sources file")
    try:
        if p.suffix == ".json":
            raw = json.loads(p.read_text())
        else:
            import yaml
            raw = yaml.safe_load(p.read_text())
    except Exception as e:  # yaml/json parse errors carry multi-line messages
        raise UserError(f"{p}: unreadable sources file ({str(e).splitlines()[0]})") from None
    if isinstance(raw, dict) and "sources" in raw:
        raw = raw["sources"]
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{p}: expected a non-empty list of sources")
    specs = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            specs.append(parse_source(item, default_field=default_field))
        elif isinstance(item, dict):
            specs.append(make_spec(item, default_field=default_field, where=f"{p}: source {i}"))
        else:
            raise UserError(f"{p}: source {i} must be a string or a mapping")
    return specs


# ---------------------------------------------------------------------------------------------
# file listing


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=2)
def stdlib_files(include_tests: bool = False) -> tuple[Path, ...]:
    """All .py files of the running Python's stdlib (no site-packages), sorted by relative path."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"} | (set() if include_tests else STDLIB_TEST_DIRS)
    out: list[Path] = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip]
        out.extend(Path(d, f) for f in files if f.endswith(".py"))
    return tuple(sorted(out, key=lambda p: p.relative_to(root).as_posix()))


def source_files(spec: SourceSpec) -> list[Path]:
    """The files a file-based source reads, in a deterministic (sorted) order."""
    if spec.kind == "stdlib":
        return list(stdlib_files(spec.tests))
    path = spec.path
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file())
    elif Path(path).is_dir():
        root = Path(path)
        files = sorted((f for f in root.rglob("*") if f.is_file()
                        and not any(part.startswith(".") for part in f.relative_to(root).parts)
                        and f.name.endswith(DIR_EXTENSIONS[spec.kind])),
                       key=lambda f: f.relative_to(root).as_posix())
    elif Path(path).is_file():
        files = [Path(path)]
    elif Path(path).exists():
        raise UserError(f"{path}: not a regular file or directory (source '{spec.name}')")
    else:
        raise UserError(f"{path}: no such file or directory (source '{spec.name}')")
    if not files:
        raise UserError(f"{path}: no {spec.kind} files found (source '{spec.name}')")
    return files


def check_source(spec: SourceSpec) -> None:
    """Cheap up-front validation (before anything is written): files exist, Parquet files open and
    have the text column. Format errors inside JSON/text files surface while reading."""
    if spec.kind == "hf":
        return
    files = source_files(spec)
    if spec.kind == "parquet":
        for f in files:
            _parquet_file(f, spec.field)


# ---------------------------------------------------------------------------------------------
# readers


def _decode(data: bytes, where: str, strict: bool, stats: ReadStats) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise UserError(f"{where}: invalid UTF-8 at byte {e.start} (--strict)") from None
        stats.bad_utf8 += 1
        return data.decode("utf-8", errors="replace")


def _open(path: Path) -> io.BufferedIOBase:
    try:
        return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror or e})") from None


def _read_bytes(path: Path) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _text_docs(files: list[Path], mode: str, strict: bool, stats: ReadStats,
               cur: Cursor) -> Iterator[str]:
    for i, f in enumerate(files):
        cur.file = i
        if mode == "file":
            data = _read_bytes(f)
            cur.pos, cur.bytes_read = 0, cur.bytes_read + f.stat().st_size
            yield _decode(data, str(f), strict, stats)
            continue
        para: list[bytes] = []
        start = 0
        try:
            with _open(f) as fh:
                for lineno, raw in enumerate(fh, 1):
                    cur.bytes_read += len(raw)
                    line = raw.rstrip(b"\r\n")
                    if mode == "line":
                        cur.pos = lineno
                        yield _decode(line, f"{f}:{lineno}", strict, stats)
                    elif line.strip():
                        start = start or lineno
                        para.append(line)
                    elif para:
                        cur.pos = start
                        yield _decode(b"\n".join(para), f"{f}:{lineno}", strict, stats)
                        para, start = [], 0
        except (OSError, EOFError) as e:
            raise UserError(f"{f}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        if para:
            cur.pos = start
            yield _decode(b"\n".join(para), str(f), strict, stats)


def _record_text(rec: Any, field: str, where: str) -> str:
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


def _jsonl_docs(files: list[Path], field: str, strict: bool, stats: ReadStats,
                cur: Cursor) -> Iterator[str]:
    for i, f in enumerate(files):
        cur.file = i
        try:
            with _open(f) as fh:
                for lineno, raw in enumerate(fh, 1):
                    cur.bytes_read += len(raw)
                    if not raw.strip():
                        continue
                    where = f"{f}:{lineno}"
                    line = _decode(raw, where, strict, stats)
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{where}: invalid JSON ({_json_problem(e)} column {e.colno})") from None
                    cur.pos = lineno
                    yield _record_text(rec, field, where)
        except (OSError, EOFError) as e:
            raise UserError(f"{f}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _json_docs(files: list[Path], field: str, strict: bool, stats: ReadStats,
               cur: Cursor) -> Iterator[str]:
    for i, f in enumerate(files):
        cur.file = i
        text = _decode(_read_bytes(f), str(f), strict, stats)
        cur.bytes_read += f.stat().st_size
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{f}: invalid JSON ({_json_problem(e)} line {e.lineno} column {e.colno})") from None
        if not isinstance(records, list):
            raise UserError(f"{f}: expected a JSON array of records, got {type(records).__name__}")
        for j, rec in enumerate(records):
            cur.pos = j
            yield _record_text(rec, field, f"{f}: record {j}")


def _parquet_file(path: Path, field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable Parquet ({str(e).splitlines()[0]})") from None
    schema = pf.schema_arrow
    if field not in schema.names:
        raise UserError(f"{path}: no text column '{field}' (columns: {', '.join(schema.names)})")
    t = schema.field(field).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise UserError(f"{path}: column '{field}' has type {t}, not string")
    return pf


def _parquet_docs(files: list[Path], field: str, cur: Cursor) -> Iterator[str]:
    import pyarrow as pa
    parquet = [_parquet_file(f, field) for f in files]
    cur.total_docs = sum(pf.metadata.num_rows for pf in parquet)
    for i, (f, pf) in enumerate(zip(files, parquet)):
        cur.file, cur.pos = i, -1
        try:
            for batch in pf.iter_batches(batch_size=1024, columns=[field]):
                for value in batch.column(0).to_pylist():
                    cur.pos += 1
                    yield value or ""
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{f}: unreadable Parquet ({str(e).splitlines()[0]})") from None


def is_saved_dataset(path: str) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def _load_hf(spec: SourceSpec):
    import datasets
    if is_saved_dataset(spec.path):
        ds = datasets.load_from_disk(spec.path)
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise UserError(f"hf:{spec.path}: no split '{spec.split}' in this saved "
                                f"DatasetDict (splits: {', '.join(ds)}); use hf:{spec.path}:SPLIT")
            ds = ds[spec.split]
        return ds.to_iterable_dataset() if spec.streaming else ds
    kwargs: dict[str, Any] = {"split": spec.split, "streaming": spec.streaming}
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    return datasets.load_dataset(spec.path, spec.config, **kwargs)


def _hf_docs(spec: SourceSpec, cur: Cursor) -> Iterator[str]:
    where = f"hf:{spec.path}"
    try:
        ds = _load_hf(spec)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        msg = (str(e).splitlines() or [""])[0]
        raise UserError(f"{where}: cannot load dataset ({type(e).__name__}: {msg})") from None
    columns = ds.column_names
    if columns is not None and spec.field not in columns:
        raise UserError(f"{where}: missing text field '{spec.field}' (columns: {', '.join(columns)})")
    cur.total_docs = len(ds) if hasattr(ds, "__len__") else None
    for i, batch in enumerate(ds.iter(batch_size=1000)):
        if spec.field not in batch:
            raise UserError(f"{where}: missing text field '{spec.field}' (columns: {', '.join(batch)})")
        for j, value in enumerate(batch[spec.field]):
            if value is not None and not isinstance(value, str):
                raise UserError(f"{where}: row {i * 1000 + j}: text field '{spec.field}' is "
                                f"{type(value).__name__}, not a string")
            cur.pos = i * 1000 + j
            yield value or ""


def iter_documents(spec: SourceSpec, *, strict: bool = False, stats: ReadStats | None = None,
                   cursor: Cursor | None = None) -> Iterator[str]:
    """All documents of `spec` in order (empty ones included; the caller skips them).
    Counts invalid UTF-8 into `stats.bad_utf8`; `cursor` follows the reader (see Cursor)."""
    stats = stats if stats is not None else ReadStats()
    cur = cursor if cursor is not None else Cursor()
    if spec.kind == "hf":
        return _hf_docs(spec, cur)
    files = source_files(spec)
    if spec.kind == "parquet":
        return _parquet_docs(files, spec.field, cur)
    if not any(f.name.endswith(".gz") for f in files):
        cur.total_bytes = sum(f.stat().st_size for f in files)
    if spec.kind in ("stdlib", "text"):
        return _text_docs(files, spec.mode if spec.kind == "text" else "file", strict, stats, cur)
    if spec.kind == "jsonl":
        return _jsonl_docs(files, spec.field, strict, stats, cur)
    return _json_docs(files, spec.field, strict, stats, cur)


def origin_files(spec: SourceSpec) -> list[str]:
    """What Cursor.file indexes: the source's files (absolute paths), or its dataset for hf."""
    if spec.kind == "hf":
        return [":".join(["hf", spec.path, *([spec.config] if spec.config else []), spec.split])]
    return [str(f.resolve()) for f in source_files(spec)]

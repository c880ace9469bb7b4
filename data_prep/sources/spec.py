"""Source specs: the `--source` grammar and `--sources FILE` lists, validated into SourceSpec.

Sources are written as `--source` strings or as entries of a YAML/JSON list (`--sources FILE`:
strings in the same grammar, or mappings with the SourceSpec fields):

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

`hf:PATH` with a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` reads it
with `datasets.load_from_disk` (SPLIT picks the split of a DatasetDict).

Every problem is a UserError of one line that starts with where the spec came from (`--source
TEXT`, or `FILE: source I`).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.values import to_bool

KINDS = ("stdlib", "text", "jsonl", "json", "parquet", "hf")
TEXT_MODES = ("file", "line", "blank")
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


def _flag(value: str, where: str) -> bool:
    try:
        return to_bool(value)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def _default_name(kind: str, path: str) -> str:
    """The name of a source written without NAME=: its path's last part without the kind's
    extensions, reduced to letters, digits and '_' (the kind when nothing is left)."""
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


def _kind_args(kind: str, rest: str, where: str) -> dict[str, Any]:
    """The SourceSpec fields written as KIND's `:ARGS` (path, and text's mode or hf's config/split)."""
    d: dict[str, Any] = {}
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
    return d


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
    d.update(_kind_args(kind, rest, where))
    for opt in opts:
        key, _, value = opt.partition("=")
        d[key] = value
    return make_spec(d, default_field=default_field, where=where)


def _read_list(p: Path) -> Any:
    """The parsed content of a sources file (.json: JSON, else YAML)."""
    if not p.is_file():
        raise UserError(f"{p}: no such sources file")
    try:
        if p.suffix == ".json":
            return json.loads(p.read_text())
        import yaml
        return yaml.safe_load(p.read_text())
    except Exception as e:  # yaml/json parse errors carry multi-line messages
        raise UserError(f"{p}: unreadable sources file ({str(e).splitlines()[0]})") from None


def load_source_list(path: str | Path, *, default_field: str = "text") -> list[SourceSpec]:
    """Read a YAML or JSON list of sources (spec strings or mappings of SourceSpec fields), bare
    or under a top-level `sources:` key."""
    p = Path(path)
    raw = _read_list(p)
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

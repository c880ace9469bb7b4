"""Which files a source reads, in a deterministic order: a file, a directory (searched
recursively for the kind's extensions, hidden paths skipped), a glob, or the running Python's
standard library. A missing path or an empty match is a UserError naming the path and source."""
from __future__ import annotations

import functools
import glob
import os
import sysconfig
from pathlib import Path

from data_prep.sources.spec import SourceSpec
from pipeline.errors import UserError

DIR_EXTENSIONS = {"text": (".txt", ".md", ".txt.gz"), "jsonl": (".jsonl", ".ndjson", ".jsonl.gz"),
                  "json": (".json", ".json.gz"), "parquet": (".parquet",)}
STDLIB_TEST_DIRS = {"test", "tests", "idle_test"}


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


def _dir_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under `root` with one of `extensions`, none under a hidden name, sorted by their
    path relative to `root`."""
    return sorted((f for f in root.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(root).parts)
                   and f.name.endswith(extensions)),
                  key=lambda f: f.relative_to(root).as_posix())


def source_files(spec: SourceSpec) -> list[Path]:
    """The files a file-based source reads, in a deterministic (sorted) order."""
    if spec.kind == "stdlib":
        return list(stdlib_files(spec.tests))
    path = spec.path
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file())
    elif Path(path).is_dir():
        files = _dir_files(Path(path), DIR_EXTENSIONS[spec.kind])
    elif Path(path).is_file():
        files = [Path(path)]
    elif Path(path).exists():
        raise UserError(f"{path}: not a regular file or directory (source '{spec.name}')")
    else:
        raise UserError(f"{path}: no such file or directory (source '{spec.name}')")
    if not files:
        raise UserError(f"{path}: no {spec.kind} files found (source '{spec.name}')")
    return files


def origin_files(spec: SourceSpec) -> list[str]:
    """What Cursor.file indexes: the source's files (absolute paths), or its dataset for hf."""
    if spec.kind == "hf":
        return [":".join(["hf", spec.path, *([spec.config] if spec.config else []), spec.split])]
    return [str(f.resolve()) for f in source_files(spec)]

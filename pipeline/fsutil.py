"""Atomic file output: everything is written under a temporary name and renamed when complete,
so a crash or kill at any moment never leaves a file that looks finished."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

from pipeline.errors import UserError


def tmp_name(path: str | os.PathLike) -> Path:
    """The temporary sibling used while `path` is being written (same directory: rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp.{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on clean exit fsync and rename it to `path`;
    on error remove it. `path` is either absent/old or complete, never partial."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    f = open(tmp, mode)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):            # a full disk fails the close's flush too
            f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(final)                    # name the file the user knows
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | os.PathLike, if_missing: str = "missing") -> Any:
    """Parse a JSON file; UserError `<path>: <if_missing>` if absent, `<path>: unreadable (...)`
    if it is not valid JSON."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {if_missing}")
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: unreadable ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete leftover temporary files or directories (from a killed writer) in `directory`;
    returns how many."""
    n = 0
    for p in Path(directory).glob(".*.tmp.*"):
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            n += 1
    return n

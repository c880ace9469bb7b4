"""User-facing errors: one line, non-zero exit, no traceback."""
from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A problem with the user's input (file, field, option). The message is one line and names
    the file or field and what is wrong; CLIs print `error: <message>` and exit 2."""


# errnos of a file-system fault the user fixes (disk full, quota, read-only, permissions, a file
# where a directory should be): one line naming the path and the errno, exit 2
FS_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
             errno.EISDIR, errno.EFBIG, errno.EEXIST}


def disk_full(path: str | os.PathLike, below: int = 1 << 20) -> bool:
    """The file system that holds `path` (or its nearest existing parent) has < `below` bytes
    free: how a write error that carries no errno is recognised as a full disk."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < below
    except OSError:
        return False


def fs_fault(e: BaseException) -> str | None:
    """`<path>: <what> (errno <NAME>)` for a file-system fault (FS_FAULTS), else None. A write
    error without an errno (numpy's tofile) on a full disk counts as ENOSPC."""
    if not isinstance(e, OSError):
        return None
    code = e.errno
    if code is None and e.filename:
        code = errno.ENOSPC if disk_full(e.filename) else None
    if code not in FS_FAULTS:
        return None
    return f"{e.filename or 'a file'}: {os.strerror(code)} (errno {errno.errorcode[code]})"


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: UserError or a file-system fault (fs_fault) -> `error: ...` on
    stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except OSError as e:
            line = fs_fault(e)
            if line is None:
                raise
            print(f"error: {line}; fix it and run the same command again", file=sys.stderr,
                  flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        return 0 if rc is None else int(rc)

    return wrapper


def need(ok: bool, key: str, what: str, error: type[Exception] = ValueError) -> None:
    """A settings check: `error` (ValueError for the lai blocks, UserError for the run config's
    validation) `<key>: <what>` (one line) unless `ok`."""
    if not ok:
        raise error(f"{key}: {what}")


def need_one_of(value, key: str, options) -> None:
    need(value in options, key, f"{value!r} is not one of {', '.join(options)}")

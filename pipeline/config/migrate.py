"""`python -m pipeline.config.migrate RUN/config.yaml [MORE.yaml ...]`: rewrite config files of
the old flat lai layout in place, the keys moved as pipeline.config.moved.MOVED says (atomically:
a temporary sibling, renamed when complete); a file already in the new layout is left as it is.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from pipeline.config.moved import migrate
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write


def migrate_file(path: Path) -> list[str]:
    """Rewrite the config file `path` in the new layout (atomically); the old keys it moved."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (run, data, model, ...)")
    new, keys = migrate(data)
    if keys:
        with atomic_write(path, "w") as f:
            yaml.safe_dump(new, f, sort_keys=False)
    return keys


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m pipeline.config.migrate CONFIG.yaml [...]", file=sys.stderr)
        return 2
    try:
        for p in paths:
            keys = migrate_file(Path(p))
            print(f"{p}: {'moved ' + ', '.join(keys) if keys else 'already in the new layout'}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

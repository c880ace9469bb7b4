"""The manifest of a prepared data directory (`manifest.json`, written last by `lai-prep`).

Its presence means the directory is complete. It names the tokenizer, the token dtype, the
train/val split rule, the sources and every shard with its counts and checksums; paths inside are
relative to the directory so a prepared directory can be moved or copied as a whole.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_json, read_json

FORMAT = "lai-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class TokenizerEntry:
    kind: str            # "sentencepiece" | "hf"
    path: str            # relative to the data directory (file for sentencepiece, dir for hf)
    sha256: str          # of the model file (sentencepiece) or of the tokenizer files (hf)
    vocab_size: int
    eos_id: int
    bos_id: int = -1
    pad_id: int = -1


@dataclass
class ShardEntry:
    source: str
    split: str           # "train" | "val"
    prefix: str          # file name prefix relative to the directory (".bin"/".idx" appended)
    num_docs: int
    num_tokens: int
    bin_sha256: str
    idx_sha256: str
    max_id: int | None = None   # the largest token id in the shard; None: written by a lai-prep
                                # that did not record it (the trainer's data check reads it)
    docs_sha256: str = ""  # of <prefix>.docs.npy, the documents' provenance ("" = none recorded)


@dataclass
class Manifest:
    tokenizer: TokenizerEntry
    dtype: str                                   # "uint16" | "int32"
    split: dict[str, Any]                        # {"val_fraction": float, "seed": int, ...}
    sources: list[dict[str, Any]]                # [{"name", "spec": {...}, "files": [...]}]
                                                 # (files: what provenance rows index)
    shards: list[ShardEntry]
    args: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)   # lai-prep --groups: per source
                         # {"k", "seed", "terms": [[word, ...]] per group, "train_docs",
                         # "train_tokens": [per group]}; each document's group: its .docs.npy
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.groups:                   # data prepared without --groups: as before
            del d["groups"]
        return d

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        atomic_write_json(path, self.to_json())
        return path

    def shards_of(self, split: str, source: str | None = None) -> list[ShardEntry]:
        return [s for s in self.shards if s.split == split and (source is None or s.source == source)]


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise UserError(f"{where}: missing field '{key}'")
    return d[key]


def load_manifest(directory: str | Path) -> Manifest:
    """Read and validate DIR/manifest.json; UserError (one line, names the file) if absent or bad."""
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise UserError(f"{directory}: data directory does not exist (prepare it with "
                        f"lai-prep --source ... --out {directory})")
    raw = read_json(path, "no manifest (data prep has not completed in this directory)")
    where = str(path)
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise UserError(f"{where}: not a {FORMAT} v{VERSION} manifest "
                        f"(format={raw.get('format')!r}, version={raw.get('version')!r})")
    try:
        tok = TokenizerEntry(**_require(raw, "tokenizer", where))
        shards = [ShardEntry(**s) for s in _require(raw, "shards", where)]
    except TypeError as e:
        raise UserError(f"{where}: malformed entry ({e})") from None
    return Manifest(tokenizer=tok, dtype=_require(raw, "dtype", where),
                    split=_require(raw, "split", where), sources=_require(raw, "sources", where),
                    shards=shards, args=raw.get("args", {}), stats=raw.get("stats", {}),
                    groups=raw.get("groups", {}))


def group_label(source: str, group: int, terms: list[str]) -> str:
    """`web/g3 [casino, bonus, free]`: how logs, TensorBoard and reports name a group."""
    return f"{source}/g{group} [{', '.join(terms)}]"

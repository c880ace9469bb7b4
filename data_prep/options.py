"""lai-prep's options and the checks every mode shares: what defines the documents, the tokenizer
and the shards (re-runs must match them), and refusing a re-run with other arguments."""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from data_prep.groups import check_groups
from data_prep.sources.read import check_source
from data_prep.sources.spec import SourceSpec
from data_prep.split import DocSplitter
from data_prep.tokenizer import TrainConfig, check_train_config
from pipeline.errors import UserError
from pipeline.fsutil import read_json, sha256_file


@dataclass
class PrepOptions:
    sources: list[SourceSpec]
    out: Path
    tokenizer: str = "train"           # train | spm:PATH | hf:NAME_OR_PATH
    vocab_size: int = 8192
    model_type: str = "bpe"
    byte_fallback: bool = True
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    train_sentences: int = 250_000
    train_threads: int = 0             # 0: same as workers
    val_fraction: float = 0.01
    seed: int = 0
    shard_tokens: int = 100_000_000
    dtype: str = "auto"                # auto | uint16 | int32
    max_docs: int | None = None        # per source
    max_bytes: int | None = None       # per source (UTF-8 bytes of non-empty documents)
    strict: bool = False
    workers: int = 2
    force: bool = False
    num_parts: int = 1
    part: int | None = None
    progress: bool | None = None       # tqdm bar: None = when stderr is a terminal
    exclude: Path | None = None        # a keep/drop list (pipeline.format.provenance)
    drop: frozenset[int] = frozenset()  # its "drop" text hashes (read once, by the CLI)
    drop_records: frozenset[tuple[int, str]] = frozenset()   # its (hash, record) "drop" rows
    exclude_match: str = "text"        # text: any document with a dropped text | record: the
                                       # listed records only
    groups: int = 0                    # K > 0: each document's group of K within its source
                                       # (data_prep.groups; seeded by `seed`)

    @property
    def bar_off(self) -> bool | None:
        """tqdm's `disable`: None = decide by the terminal."""
        return None if self.progress is None else not self.progress

    def reading_args(self) -> dict[str, Any]:
        """What defines the document streams."""
        a: dict[str, Any] = {"sources": [s.to_json() for s in self.sources], "max_docs": self.max_docs,
             "max_bytes": self.max_bytes, "strict": self.strict}
        if self.exclude is not None:
            a["exclude"] = {"list": str(self.exclude), "sha256": sha256_file(self.exclude),
                            "documents": len(self.drop), "match": self.exclude_match}
        return a

    def tokenizer_args(self) -> dict[str, Any]:
        """What defines the tokenizer."""
        a: dict[str, Any] = {"tokenizer": self.tokenizer}
        if self.tokenizer == "train":
            a.update(self.reading_args(), **{k: v for k, v in asdict(self.train_config()).items() if k != "num_threads"})
            if self.model_type == "unigram":     # unigram EM depends on the thread count
                a["train_threads"] = self.train_config().num_threads
        return a

    def output_args(self) -> dict[str, Any]:
        """What defines the shards: the manifest's `args`; re-runs must match them."""
        a = {**self.reading_args(), "tokenizer": self.tokenizer_args(), "dtype": self.dtype,
             "val_fraction": self.val_fraction, "seed": self.seed, "shard_tokens": self.shard_tokens}
        if self.groups:
            a["groups"] = self.groups
        if self.part is not None:
            a["num_parts"] = self.num_parts
        return a

    def train_config(self) -> TrainConfig:
        return TrainConfig(vocab_size=self.vocab_size, model_type=self.model_type, byte_fallback=self.byte_fallback,
                           pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id, unk_id=self.unk_id,
                           max_sentences=self.train_sentences, seed=self.seed,
                           num_threads=self.train_threads or self.workers)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def changed(old: Any, new: Any, path: str = "") -> str | None:
    """The first difference between two JSON-like values, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            d = changed(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            d = changed(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if old == new else f"{path}: {json.dumps(old)} -> {json.dumps(new)}"


def refuse_changed(path: Path, old: dict, new: dict) -> None:
    raise UserError(f"{path}: the output was made with different arguments ({changed(old, new)}); re-run with the "
                    f"same arguments to resume, pass --force to start over, or use another --out")


def read_optional(path: Path) -> dict | None:
    """The JSON at `path`, or None if there is none yet (UserError if unreadable)."""
    return read_json(path) if path.is_file() else None


@contextlib.contextmanager
def output_folder(out: Path) -> Iterator[None]:
    """Around a command that writes into `out`: if it fails, the folders it created for `out`
    are removed again when they are still empty (no empty output folder is left behind)."""
    created = [p for p in (out, *out.parents) if not p.exists()]       # deepest first
    try:
        yield
    except BaseException:
        for p in created:
            try:
                p.rmdir()
            except OSError:           # not empty (resumable work in it), or already gone
                break
        raise


def check_options(opts: PrepOptions) -> None:
    """Fail before reading anything on bad options, missing inputs or an unusable --out."""
    if opts.tokenizer == "train":
        check_train_config(opts.train_config())
        if opts.dtype == "uint16" and opts.vocab_size > 65536:
            raise UserError(f"--vocab-size {opts.vocab_size}: does not fit --dtype uint16 (ids up to 65535)")
    DocSplitter(opts.val_fraction, opts.seed)
    check_groups(opts.groups)
    for spec in opts.sources:
        check_source(spec)
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{opts.out}: cannot create the output directory ({e.strerror or e})") from None

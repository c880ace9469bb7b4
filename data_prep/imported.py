"""`lai-prep import DIR --tokenizer spm:PATH|hf:NAME_OR_PATH`: make shards written elsewhere
(Megatron-LM / megatron-core's IndexedDatasetBuilder, GPT-NeoX's preprocess_data) a prepared
data directory the trainer reads, without re-tokenizing.

Every `*.bin`/`*.idx` pair under DIR (recursively) is opened and validated
(pipeline.format.indexed), hashed, and its largest token id read; the tokenizer the shards were
made with is copied into DIR and checked against them (every id inside its vocabulary); then
DIR/manifest.json is written last, as lai-prep writes it, with one source (`--source`, default
DIR's name) and the shards whose path matches `--val GLOB` as its val split. The shards are left
as they are (no provenance sidecars: the report shows no original record for their documents).
Documents are packed back to back as stored: shards written without an end-of-document token
(Megatron's --append-eod) get a warning line saying how many documents lack it.
"""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path

import numpy as np

from data_prep.options import log
from data_prep.tokenizer import install_tokenizer, tokenizer_entry
from pipeline.errors import UserError
from pipeline.format.indexed import TOKEN_DTYPES, IndexedReader, bin_path, idx_path
from pipeline.format.manifest import MANIFEST_NAME, Manifest, ShardEntry
from pipeline.format.verify import scan_bin, vocab_error
from pipeline.fsutil import sha256_file


def find_shards(out: Path) -> list[str]:
    """Prefixes (relative to `out`, sorted) of every .idx under `out` with a .bin next to it."""
    prefixes = [str(p.relative_to(out))[:-len(".idx")] for p in out.rglob("*.idx")]
    found = sorted(p for p in prefixes if bin_path(out / p).is_file())
    if not found:
        raise UserError(f"{out}: no .bin/.idx shard pairs found to import")
    return found


def _entry(out: Path, prefix: str, source: str, split: str, vocab_size: int,
           eos_id: int) -> tuple[ShardEntry, np.dtype, int]:
    """The manifest entry of one shard, its dtype and how many of its documents lack eos_id
    (the .bin is read once: hash and id range together)."""
    r = IndexedReader(out / prefix)
    if r.dtype not in TOKEN_DTYPES:
        raise UserError(f"{idx_path(out / prefix)}: token dtype {r.dtype} (the trainer reads "
                        f"{' or '.join(map(str, TOKEN_DTYPES))})")
    scan = scan_bin(bin_path(out / prefix), r.dtype)
    if not scan.in_vocab(vocab_size):
        raise vocab_error(r, vocab_size)
    no_eos = 0
    if r.num_docs and r.num_tokens:
        last = r.document_indices[1:] - 1                      # each document's last sequence
        end = np.maximum(r.starts[last] + r.lengths[last] - 1, 0)
        no_eos = int(((r.lengths[last] == 0) | (r.tokens[end] != eos_id)).sum())
    entry = ShardEntry(source=source, split=split, prefix=prefix, num_docs=r.num_docs,
                       num_tokens=r.num_tokens, bin_sha256=scan.sha256,
                       idx_sha256=sha256_file(idx_path(out / prefix)),
                       max_id=scan.hi if r.num_tokens else None)
    return entry, r.dtype, no_eos


def run_import(out: Path, tokenizer: str, source: str = "", val: str = "",
               force: bool = False) -> Manifest:
    """Write `out`/manifest.json for the shards in `out` (see the module doc)."""
    t0 = time.perf_counter()
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out}: no such directory")
    if (out / MANIFEST_NAME).is_file() and not force:
        raise UserError(f"{out / MANIFEST_NAME}: already exists (use --force to replace it)")
    prefixes = find_shards(out)
    tok = tokenizer_entry(out, install_tokenizer(tokenizer, out))
    source = source or out.resolve().name
    results = [_entry(out, p, source, "val" if val and fnmatch.fnmatch(p, val) else "train",
                      tok.vocab_size, tok.eos_id) for p in prefixes]
    dtypes = sorted({str(d) for _, d, _ in results})
    if len(dtypes) > 1:
        raise UserError(f"{out}: shards of different token dtypes ({', '.join(dtypes)}); import "
                        "each dtype into its own directory")
    shards = [e for e, _, _ in results]
    if not any(e.split == "train" for e in shards):
        raise UserError(f"--val {val!r}: matches every shard of {out}; none is left to train on")
    m = Manifest(tokenizer=tok, dtype=dtypes[0], split={"imported": True, "val": val},
                 sources=[{"name": source, "spec": {"kind": "import", "path": str(out)},
                           "files": []}],
                 shards=shards, args={"command": "import", "tokenizer": tokenizer,
                                      "source": source, "val": val},
                 stats={"num_docs": sum(e.num_docs for e in shards),
                        "num_tokens": sum(e.num_tokens for e in shards)})
    no_eos = sum(n for _, _, n in results)
    if no_eos:
        log(f"warning: {no_eos:,} of {m.stats['num_docs']:,} documents do not end with the "
            f"tokenizer's eos id {tok.eos_id} (written without an end-of-document token?): the "
            "loader packs them back to back without a separator")
    m.save(out)
    splits = {s: sum(e.num_tokens for e in shards if e.split == s) for s in ("train", "val")}
    log(f"lai-prep import: {out}: {len(shards)} shards ({m.dtype}), {m.stats['num_docs']:,} "
        f"documents, {splits['train']:,} train + {splits['val']:,} val tokens, max token id "
        f"{max((e.max_id for e in shards if e.max_id is not None), default=-1)} < vocab "
        f"{tok.vocab_size} ({tok.kind} tokenizer {tok.path}); {time.perf_counter() - t0:.1f} s")
    return m

"""lai-prep in one run: `lai-prep --source ... --out OUT`.

State in OUT (all written atomically): the tokenizer (tokenizer.model | tokenizer/) and
tokenizer-info.json (how it was made; reused when the arguments match), progress.json (completed
shards + finished sources, see data_prep.stages), and manifest.json, written last: its presence =
the directory is complete. `lai-prep verify OUT` checks every shard of a finished directory.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from data_prep.options import PrepOptions, check_options, log, read_optional, refuse_changed
from data_prep.partitioned import PARTS
from data_prep.shards import SHARD_RE, shard_intact, verify_shard
from data_prep.split import DocSplitter
from data_prep.stages import (GROUPS_FILE, TOKENIZER_INFO, Progress, choose_dtype, ensure_tokenizer,
                              load_progress, make_manifest, summary, tokenize_all)
from pipeline.errors import UserError
from pipeline.format.manifest import MANIFEST_NAME, Manifest, ShardEntry, load_manifest
from pipeline.format.tokenizer import HF_DIR, SPM_FILE, tokenizer_sha256
from pipeline.fsutil import remove_stale_tmp

PROGRESS = "progress.json"


def run_prep(opts: PrepOptions) -> Manifest:
    """`lai-prep --source ... --out OUT`: the prepared directory's manifest (a complete and
    intact OUT is left as it is)."""
    t0 = time.perf_counter()
    out = opts.out
    check_options(opts)
    args = opts.output_args()
    if opts.force:
        _wipe(out)
    previous: list[ShardEntry] = []
    if (out / MANIFEST_NAME).is_file():
        m = load_manifest(out)
        if m.args != args:
            refuse_changed(out / MANIFEST_NAME, m.args, args)
        if all(shard_intact(out, e) for e in m.shards):
            log(f"lai-prep: {out} is complete and intact ({len(m.shards)} shards); nothing to do")
            return m
        previous = m.shards
        (out / MANIFEST_NAME).unlink()
    for d in (out, out / PARTS):            # temporaries (files and directories) of killed runs
        if d.is_dir():
            remove_stale_tmp(d)
    run = load_progress(out / PROGRESS, args, out, previous)
    info_before = read_optional(out / TOKENIZER_INFO)
    entry, _ = ensure_tokenizer(opts)
    if info_before is None or info_before.get("entry") != asdict(entry):
        run = Progress(out / PROGRESS, args)               # a new tokenizer invalidates old shards
    dtype = choose_dtype(entry, opts.dtype, opts.out)
    run.save()
    read = tokenize_all(opts, run, entry, dtype, {}, require_nonempty=True)
    m = make_manifest(opts, entry, dtype, DocSplitter(opts.val_fraction, opts.seed), run.shards, read, args)
    m.save(out)
    (out / PROGRESS).unlink(missing_ok=True)
    log(summary(m, out, time.perf_counter() - t0))
    return m


def _wipe(out: Path) -> None:
    """--force: remove every lai-prep output in `out` (shards, state, tokenizer); nothing else."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name) or p.name in (MANIFEST_NAME, PROGRESS, TOKENIZER_INFO, SPM_FILE, GROUPS_FILE):
            p.unlink()
    for d in (out / PARTS, out / HF_DIR):
        shutil.rmtree(d, ignore_errors=True)


def run_verify(out: Path) -> Manifest:
    """`lai-prep verify OUT`: check every shard against the byte format and the manifest."""
    out = Path(out)
    m = load_manifest(out)
    tok = out / m.tokenizer.path
    if not tok.exists():
        raise UserError(f"{tok}: tokenizer named by the manifest is missing")
    if tokenizer_sha256(tok) != m.tokenizer.sha256:
        raise UserError(f"{tok}: checksum does not match the manifest")
    for e in m.shards:
        verify_shard(out, e, m.dtype, m.tokenizer.vocab_size)
    log(f"lai-prep: {out}: {len(m.shards)} shards, {sum(e.num_tokens for e in m.shards):,} tokens, all intact")
    return m

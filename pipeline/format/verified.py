"""RUN/data-verified.json and the data.verify pass that fills it: every shard a run reads checked
against its manifest (pipeline.format.verify), shared out over the ranks by bytes.

    note = verify_shards(dirs, mode, run_dir, comm)   # mode first | always | never; UserError
                                                       # (every rank) naming the first bad shard
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from pipeline.comm import Comm
from pipeline.errors import UserError
from pipeline.format.manifest import load_manifest
from pipeline.format.verify import ShardCheck
from pipeline.fsutil import atomic_write_json, read_json

VERIFIED = "data-verified.json"


def verify_shards(dirs: Iterable[Path], mode: str, run_dir: Path, comm: Comm) -> str | None:
    """data.verify over the prepared directories `dirs`: sha256 and token ids of every shard;
    UserError (on every rank) naming the first bad shard. `first` skips the shards recorded in
    RUN/data-verified.json with the stamp they have now (manifest checksums, sizes, mtimes): on a
    resumed run, only shards whose files changed are read again. Progress on rank 0 (its share);
    returns the summary line, None when nothing was read."""
    if mode == "never":
        return None
    checks = {str((d / e.prefix).resolve()): ShardCheck(d, e, np.dtype(m.dtype), m.tokenizer.vocab_size)
              for d, m in ((d, load_manifest(d)) for d in dirs) for e in m.shards}
    stamps = {key: c.stamp() for key, c in checks.items()}
    record_path = run_dir / VERIFIED
    record = read_json(record_path) if mode == "first" and record_path.is_file() else {}
    todo = sorted((key for key in checks if record.get(key) != stamps[key]),
                  key=lambda key: (-checks[key].nbytes, key))
    if not todo:
        return None
    loads, mine = [0] * comm.world, []           # largest first, each to the least loaded rank
    for key in todo:
        r = loads.index(min(loads))
        loads[r] += checks[key].nbytes
        if r == comm.rank:
            mine.append(checks[key])
    t0 = time.perf_counter()
    with tqdm(total=loads[comm.rank], unit="B", unit_scale=True, desc="verifying data",
              disable=None if comm.rank == 0 else True) as bar:
        problems = [p for c in mine if (p := c.run(bar.update))]
    problems = sorted(p for rank_problems in comm.gather_objects(problems) for p in rank_problems)
    if problems:
        more = f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    if comm.rank == 0:
        atomic_write_json(record_path, {**record, **{key: stamps[key] for key in todo}})
    return (f"data.verify={mode}: {len(todo)} shard(s), {sum(loads) / 1e6:,.1f} MB checked in "
            f"{time.perf_counter() - t0:.1f} s over {comm.world} rank(s); recorded in {record_path}")

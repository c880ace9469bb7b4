"""The valuation ledger's chunks are atomic under SIGKILL: a writer process killed mid-chunk
leaves no partial chunk (the ledger's format and resume: unit/test_ledger.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from pipeline.format.ledger import Ledger, read_ledger
from support import ROOT


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from pipeline.format.ledger import Ledger
    led = Ledger(sys.argv[1], 0, chunk_rows=100_000)
    led.append(0, np.arange(10), np.ones(10), np.ones(10, bool), np.ones(10))
    led.flush()                                      # one complete chunk
    n = 100_000
    real_fsync = os.fsync
    def stuck_fsync(fd):                             # the chunk body is written, not yet renamed
        open(sys.argv[2], "w").close()
        time.sleep(60)
    os.fsync = stuck_fsync
    led.append(1, np.arange(10, 10 + n), np.ones(n), np.ones(n, bool), np.ones(n))
""")


def test_kill_mid_write_leaves_no_partial_chunk(tmp_path):
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), str(ready)],
                            env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never reached the chunk write"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    rank_dir = tmp_path / "ledger/rank-00000"
    tmp = [p for p in rank_dir.iterdir() if p.name.startswith(".")]
    assert len(tmp) == 1 and tmp[0].stat().st_size > 1_000_000   # the partial body exists...
    rows = read_ledger(tmp_path)                                 # ...but is not a chunk
    assert rows.size == 10 and (rows["step"] == 0).all()
    Ledger(tmp_path, 0)                                          # next writer cleans it up
    assert sorted(p.name for p in rank_dir.iterdir()) == ["chunk-00000000.npy"]

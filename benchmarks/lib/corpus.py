"""The default prepared corpus of the benchmarks (python stdlib through the real data prep)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

from benchmarks.lib.paths import ROOT


def prepare_default_corpus(out_dir: Path, vocab_size: int, extra: Sequence[str] = ()) -> Path:
    """Run the real data prep (`python -m data_prep --source stdlib`) into out_dir unless a complete
    prepared directory (manifest.json) is already there. Returns out_dir."""
    if (out_dir / "manifest.json").is_file():
        return out_dir
    cmd = [sys.executable, "-m", "data_prep", "--source", "stdlib", "--out", str(out_dir),
           "--vocab-size", str(vocab_size), *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out_dir

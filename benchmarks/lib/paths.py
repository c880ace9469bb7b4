"""Where the benchmarks live: the repository root and the default output folder (git-ignored)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "out"

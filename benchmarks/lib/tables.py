"""Markdown tables of the benchmark reports."""
from __future__ import annotations

from typing import Sequence


def md_table(header: Sequence[str], rows: Sequence[Sequence], floatfmt: str = "{:.3f}") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if v != v else floatfmt.format(v)
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)

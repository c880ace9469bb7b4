"""lai-report as a real `python -m pipeline.report` process: one summary line naming the report,
and one error line for a missing run directory (the report's numbers: unit/test_report.py)."""
from __future__ import annotations

import subprocess
import sys

from support import ROOT


def test_cli(report_run, tmp_path):
    run_dir = report_run[0]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "pipeline.report", str(run_dir)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("report: 48 sequences over 12 steps")
    assert "marked drop in keep_drop.csv" in out[0]
    assert out[0].endswith(str(run_dir / "report" / "report.md"))

    p = subprocess.run([sys.executable, "-m", "pipeline.report", str(tmp_path / "missing")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: run directory not found"]

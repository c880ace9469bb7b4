"""launch/tensorboard.sh: serves an experiment's runs on loopback, refuses a busy port, stops."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.comm import free_port
from support import ROOT

SCRIPT = ROOT / "launch" / "tensorboard.sh"


def _write_run(run_dir: Path, losses: list[float]) -> None:
    """As the trainer writes it (pipeline.train.metrics: LAI tags carry a description)."""
    from pipeline.train.metrics import Metrics

    with Metrics(run_dir / "tb", 0, 1) as m:
        for step, loss in enumerate(losses):
            m.scalars(step, {"train/loss": loss, "lai/excluded_frac": 0.1})


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _poll(url: str, proc: subprocess.Popen, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tensorboard.sh exited {proc.returncode}: {proc.stdout.read()}")
        try:
            return _get_json(url)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} within {timeout}s")


@pytest.mark.slow
def test_serves_runs_side_by_side_on_loopback_and_stops(tmp_path):
    exp = tmp_path / "exp"
    _write_run(exp / "baseline", [4.0, 3.5, 3.2])
    _write_run(exp / "lai", [4.0, 3.4, 3.0])
    port = free_port()
    proc = subprocess.Popen([str(SCRIPT), "--port", str(port), str(exp)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        tags = _poll(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", proc)
        assert set(tags) == {"baseline/tb", "lai/tb"}
        assert {"train/loss", "lai/excluded_frac"} <= set(tags["lai/tb"])
        # the descriptions are served (TensorBoard 2.21's fast loader would drop them)
        assert "excluded before the optimizer step" in tags["lai/tb"]["lai/excluded_frac"]["description"]
        series = _get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars"
                           f"?run=lai/tb&tag=train/loss")
        assert [round(v, 4) for _, _, v in series] == [4.0, 3.4, 3.0]
        listening = {c.laddr for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening

        # a second server on the same port: a clear one-line error, exit 2
        busy = subprocess.run([str(SCRIPT), "--port", str(port), str(exp)], capture_output=True,
                              text=True, timeout=30)
        assert busy.returncode == 2
        assert f"port {port} on 127.0.0.1 is in use" in busy.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    with pytest.raises(OSError):
        _get_json(f"http://127.0.0.1:{port}/data/runs")


def test_usage_and_input_errors(tmp_path):
    missing = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "missing PATH" in missing.stderr
    assert "Usage: launch/tensorboard.sh" in missing.stderr
    nodir = subprocess.run([str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True)
    assert nodir.returncode == 2 and "nope: no such directory" in nodir.stderr
    badport = subprocess.run([str(SCRIPT), "--port", "http", str(tmp_path)], capture_output=True,
                             text=True)
    assert badport.returncode == 2 and "'http' is not a TCP port" in badport.stderr
    helped = subprocess.run([str(SCRIPT), "-h"], capture_output=True, text=True)
    assert helped.returncode == 0 and "ssh -N -L" in helped.stdout

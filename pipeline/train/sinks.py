"""Where a run's global scalars go besides TensorBoard (rank 0 only; pipeline.train.metrics
hands every `scalars` call to each sink):

    RUN/metrics.jsonl   always: one JSON object per logged step, {"step": N, tag: value, ...},
                        the same tags and values as TensorBoard (NaN/inf as null)
    W&B                 log.wandb=true (optional dependency: pip install 'lai-pretrain[wandb]');
                        the run lives in RUN/wandb/, offline too (WANDB_MODE=offline), and a
                        resumed run continues the same W&B run (its id in RUN/wandb-id.txt)

The JSONL file is append-only: a step's object is written in one write when the step is done
(the next step's first scalars, a flush or close) and flushed at once. Resume-safe: opened with
`purge_step=S` it first drops every line for steps >= S and a torn last line (what a killed run
left after its checkpoint), so the file holds each step once.
"""
from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pipeline.fsutil import atomic_write

JSONL_NAME = "metrics.jsonl"


class JsonlSink:
    def __init__(self, path: str | Path, purge_step: int | None = None):
        self.path = Path(path)
        if purge_step is not None and self.path.exists():
            self._truncate(purge_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._step: int | None = None
        self._row: dict[str, float | None] = {}

    def _truncate(self, purge_step: int) -> None:
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                step = json.loads(line)["step"] if line.endswith("\n") else None
            except (ValueError, KeyError, TypeError):
                step = None
            if step is not None and step < purge_step:
                keep.append(line)
        with atomic_write(self.path, "w") as f:
            f.write("".join(keep))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if step != self._step:
            self.flush()
            self._step = step
        for tag, v in values.items():
            v = float(v)
            self._row[tag] = v if math.isfinite(v) else None

    def flush(self) -> None:
        if self._row:
            self._file.write(json.dumps({"step": self._step, **self._row}) + "\n")
            self._file.flush()
            self._row = {}

    def close(self) -> None:
        self.flush()
        self._file.close()


class WandbSink:
    """One W&B run per run directory (named after it), holding the resolved config."""

    def __init__(self, run_dir: Path, project: str, config: dict):
        import wandb
        id_file = run_dir / "wandb-id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        with atomic_write(id_file, "w") as f:
            f.write(run_id + "\n")
        self._run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow",
                               dir=str(run_dir), config=config)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log({tag: float(v) for tag, v in values.items()}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._run.finish()


def open_sinks(run_dir: Path, main: bool, purge_step: int, wandb_project: str | None,
               config: dict) -> list:
    """The sinks of rank 0 (`main`); none on the other ranks."""
    if not main:
        return []
    sinks: list = [JsonlSink(run_dir / JSONL_NAME, purge_step)]
    if wandb_project:
        os.environ.setdefault("WANDB_SILENT", "true")
        sinks.append(WandbSink(run_dir, wandb_project, config))
    return sinks

"""Helpers shared by tests/unit and tests/e2e (no tests here; `pythonpath = ["tests"]` in
pyproject.toml makes this package importable as `support`):

- datagen: tiny prepared data directories (shards + manifest, no tokenizer run);
- indexed: an independent reader/writer of the Megatron indexed-dataset bytes;
- prep: lai-prep's test documents and runners (in-process and as a subprocess);
- lai: tiny HF models and explicit LAI constructions;
- engine: 2-rank DeepSpeed engines on gloo;
- train: lai-train runners (one process or torchrun) and readers of what a run leaves;
- faults: the one-process runs of the bad-input and fault tests;
- slurm: a real two-node Slurm cluster on this machine.
Fixtures shared across files live in tests/conftest.py.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]    # the repository
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"

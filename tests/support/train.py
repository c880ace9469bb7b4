"""Shared helpers for the end-to-end lai-train tests (no tests here): a prepared directory with a
real sentencepiece tokenizer, the tiny run's overrides, runners for 2 ranks (torchrun) or one
process and launch/train.sh's environment, plus readers of what a run leaves (ledger, final
weights, TensorBoard scalars)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.comm import free_port
from support import CONFIG, ROOT

N = 4   # steps before an interruption; straight runs train 2N


def make_animals_data(out: Path) -> Path:
    """A prepared directory under `out` with a real sentencepiece tokenizer: repetitive English
    sentences, every 4th document random tokens."""
    import sentencepiece as spm

    from support.datagen import make_data_dir
    from pipeline.format.manifest import load_manifest
    from pipeline.fsutil import sha256_file
    rng = np.random.default_rng(0)
    animals = "cat dog bird fish horse mouse sheep goat camel zebra tiger whale".split()
    verbs = "sees likes follows eats chases feeds greets watches".split()
    adjectives = "big small red green quick lazy happy sleepy".split()
    texts = [" ".join(f"the {rng.choice(adjectives)} {rng.choice(animals)} {rng.choice(verbs)} "
                      f"the {rng.choice(animals)} ." for _ in range(int(rng.integers(2, 8))))
             for _ in range(500)]
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "sp"), vocab_size=64,
                                   hard_vocab_limit=False, bos_id=1, eos_id=2, pad_id=0,
                                   unk_id=3, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(out / "sp.model"))
    docs = [np.array(sp.encode(t) + [2]) for t in texts]
    for i in range(0, len(docs), 4):          # every 4th document is noise: LAI should drop some
        docs[i] = np.append(rng.integers(4, sp.get_piece_size(), size=40), 2)
    d = make_data_dir(out / "prepared", docs[:440], vocab_size=sp.get_piece_size(), source="animals",
                      val_docs=docs[440:])
    os.replace(out / "sp.model", d / "tokenizer.model")
    m = load_manifest(d)
    m.tokenizer = dataclasses.replace(m.tokenizer, sha256=sha256_file(d / "tokenizer.model"))
    m.save(d)
    return d


def train_args(data: Path, run: Path, *overrides: str) -> list[str]:
    """The tiny run: 2 layers x 64, seq 32, micro batch 4 (global batch = 4 x ranks unless an
    override pins train.global_batch), 2N steps, checkpoints every 4 steps, the LAI filter on
    (lai.filter.kind=lai, not the shipped none), so keep decisions are part of what tests compare."""
    return [str(CONFIG), f"run.out_dir={run}", f"data.sources=[{{path: '{data}', weight: 1.0}}]",
            "data.seq_len=32", "model.n_layer=2", "model.hidden=64", "model.n_head=2",
            "train.micro_batch=4", "train.global_batch=0", f"train.steps={2 * N}",
            "train.lr=1e-2", "train.min_lr=1e-3", "train.warmup_steps=2", "train.eval_every=4",
            "train.eval_batches=2", "lai.filter.kind=lai", "lai.warmup_steps=1", "lai.filter.max_exclude_frac=0.25",
            "log.every=1", "log.histogram_every=4", "run.save_every=4", *overrides]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "TOKENIZERS_PARALLELISM": "false"}


def torchrun(args: list[str], ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_port", str(free_port()), "-m", "pipeline.train", *args]


def one_process(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", *args]


def run_train(args: list[str], rc: int = 0, ranks: int = 2, extra_env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """lai-train `args` on `ranks` ranks (torchrun; 1 = one plain process in a fresh world) from
    the repository, in env() plus `extra_env`; asserts its exit code."""
    cmd = torchrun(args, ranks) if ranks > 1 else one_process(args)
    run_env = {**env(), **(extra_env or {})}
    if ranks == 1:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
            run_env.pop(key, None)
    p = subprocess.run(cmd, env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == rc, (p.stdout + p.stderr)[-4000:]
    return p


def train(data: Path, run: Path, *overrides: str, rc: int = 0, ranks: int = 2) -> str:
    """Run the tiny run on `ranks` ranks (torchrun; 1 = one plain process); its output."""
    p = run_train(train_args(data, run, *overrides), rc=rc, ranks=ranks)
    return p.stdout + p.stderr


def refused(args: list[str]) -> list[str]:
    """lai-train `args` called in this process (one rank, the same entry point as `python -m
    pipeline.train`), for a refusal that comes before anything starts: asserts exit 2; the
    stderr lines. Saves the seconds of a fresh interpreter importing torch."""
    import contextlib
    import io

    import pytest

    from pipeline.train.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2, err.getvalue()
    return err.getvalue().strip().splitlines()


def launch_env(port: int | None = None) -> dict[str, str]:
    """launch/train.sh's environment: CPU ranks (CUDA_VISIBLE_DEVICES="" hides any GPU), outside
    any Slurm job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port or free_port()),
           "CUDA_VISIBLE_DEVICES": ""}
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def ledger(run: Path) -> np.ndarray:
    from pipeline.format.ledger import read_ledger
    return read_ledger(run)


def final_params(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(run / "final" / "model.safetensors")


def scalars(run: Path, sub: str = "") -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run / "tb" / sub))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def tb_scalars(run: Path, tag: str = "train/loss") -> dict[int, float]:
    """{step: value} of one scalar tag in RUN/tb."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def loss_by_step(run: Path, steps: int = 2 * N) -> np.ndarray:
    rows = ledger(run)
    return np.array([rows["loss"][rows["step"] == s].mean() for s in range(1, steps + 1)])


def read_wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a W&B transaction log (.wandb: a 7-byte header, then LevelDB-log
    records in 32 KiB blocks: crc32c u32, length u16, type u8 (1 full, 2 first, 3 middle, 4
    last), each holding a wandb_internal_pb2.Record)."""
    from wandb.proto.wandb_internal_pb2 import Record
    data, pos, record, rows = run_file.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:                       # block trailer: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            r = Record.FromString(record)
            record = b""
            if r.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in r.history.item})
    return rows


def wait_for_wandb_history(run_file: Path, rows: int, timeout: float = 60) -> list[dict]:
    """read_wandb_history once it holds `rows` rows: wandb's service process may still be
    writing the transaction log when finish() returns on a loaded machine."""
    import time
    deadline = time.monotonic() + timeout
    while len(found := read_wandb_history(run_file)) < rows and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def assert_two_one_two_equals_straight(straight: Path, run: Path) -> None:
    """`run` (2 ranks to step 4, 1 rank to 6, 2 ranks to 8; global batch 8) trained what the
    uninterrupted `straight` run did: each sequence once, at the same step, with the same keep
    decisions, losses and values (up to the float summation order of other world sizes)."""
    a, b = ledger(straight), ledger(run)
    assert a.size == b.size == 8 * 8                          # each sequence once
    assert np.array_equal(a["seq_id"], b["seq_id"]) and np.array_equal(a["step"], b["step"])
    assert set(b["rank"][(b["step"] == 5) | (b["step"] == 6)]) == {0}     # the 1-rank steps
    assert np.array_equal(a["kept"], b["kept"]) and (~a["kept"]).any()
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-3, atol=1e-6)
    assert abs(a["loss"][:8].mean() - a["loss"][-8:].mean()) > 0.3   # it trained


def assert_export_equals_final(run: Path, out: Path) -> None:
    """lai-export of `run`'s step-8 checkpoint into `out` holds exactly RUN/final's weights."""
    from safetensors.torch import load_file

    from pipeline.train.hf.export_checkpoint import main as lai_export
    assert lai_export([str(run / "checkpoints" / "step_00000008"), str(out)]) == 0
    final, exported = final_params(run), load_file(out / "model.safetensors")
    assert final.keys() == exported.keys()
    assert all(torch.equal(final[k], exported[k]) for k in final)

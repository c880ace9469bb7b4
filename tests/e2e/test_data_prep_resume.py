"""Resume and partitioned runs: a real `python -m data_prep` killed with SIGKILL mid-tokenization
and re-run writes the same bytes as an uninterrupted run; changed shards are redone; parts + merge
hold the same documents, token for token, as a single run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.format.manifest import load_manifest
from support.prep import ROOT, VOCAB, dir_bytes, make_docs, prep, prep_cli, read_docs, write_text_dir


def _no_temporaries(out) -> bool:
    return not any(".tmp." in p.name for p in out.rglob("*"))


def test_kill_during_tokenization_then_rerun_gives_identical_bytes(tmp_path, spm_model):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(make_docs(6000, seed=5)))          # ~21k one-line documents
    args = ["--source", f"text:{corpus}:line", "--tokenizer", f"spm:{spm_model}", "--shard-tokens", 1500,
            "--val-fraction", 0.05]
    ref, out = tmp_path / "ref", tmp_path / "out"
    r = prep_cli(*args, "--out", ref, "--workers", 2)
    assert r.returncode == 0, r.stderr
    n_shards = len(load_manifest(ref).shards)
    assert n_shards > 40

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *map(str, args), "--out", str(out), "--workers", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    progress = out / "progress.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(json.loads(progress.read_text())["shards"]) >= 5:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)          # the run and its pool workers
        proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    done = len(json.loads(progress.read_text())["shards"])
    assert 5 <= done < n_shards

    r = prep_cli(*args, "--out", out, "--workers", 1)   # resume, with another worker count
    assert r.returncode == 0, r.stderr
    assert dir_bytes(out) == dir_bytes(ref)
    assert _no_temporaries(out) and not progress.exists()


def test_changed_or_missing_shard_is_redone(tmp_path, spm_model):
    src = write_text_dir(tmp_path / "c", make_docs(80, seed=6))
    out = tmp_path / "out"
    args = ["--source", f"text:{src}", "--out", out, "--tokenizer", f"spm:{spm_model}", "--shard-tokens", 400]
    prep(*args)
    ref = dir_bytes(out)
    shards = load_manifest(out).shards
    assert len(shards) >= 4
    victim = out / f"{shards[1].prefix}.bin"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    (out / f"{shards[3].prefix}.idx").unlink()
    (out / f".{shards[2].prefix}.bin.tmp.99999").write_bytes(b"stale")     # a killed writer's leftover
    with pytest.raises(SystemExit):
        prep("verify", out)
    prep(*args)
    assert dir_bytes(out) == ref and _no_temporaries(out)


def test_partitioned_parts_and_merge_equal_single_run(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = make_docs(150, seed=7)
    src = write_text_dir(tmp_path / "c", docs[:90])
    pq.write_table(pa.table({"text": docs[90:]}), tmp_path / "p.parquet")
    base = ["--source", f"notes=text:{src}", "--source", f"tab=parquet:{tmp_path / 'p.parquet'}",
            "--vocab-size", VOCAB, "--shard-tokens", 700, "--val-fraction", 0.2]
    single, parted = tmp_path / "single", tmp_path / "parted"
    prep(*base, "--out", single)

    prep("tokenizer", *base, "--out", parted)
    prep(*base, "--out", parted, "--num-parts", 3, "--part", 0)
    # part 2 as a Slurm array task would run it: the part number from $SLURM_ARRAY_TASK_ID
    r = subprocess.run([sys.executable, "-m", "data_prep", *map(str, base), "--out", str(parted), "--num-parts", "3"],
                       cwd=ROOT, env={**os.environ, "SLURM_ARRAY_TASK_ID": "2", "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        prep("merge", parted)
    assert e.value.code == 2 and "missing: 1" in capsys.readouterr().err
    prep(*base, "--out", parted, "--num-parts", 3, "--part", 1)
    prep(*base, "--out", parted, "--num-parts", 3, "--part", 1)            # re-run: already complete
    assert "already complete" in capsys.readouterr().err
    prep("merge", parted)
    prep("merge", parted)                                                   # idempotent
    prep("verify", parted)

    a, b = load_manifest(single), load_manifest(parted)
    assert (out_bytes := (parted / "tokenizer.model").read_bytes()) == (single / "tokenizer.model").read_bytes()
    assert len(out_bytes) > 0 and a.tokenizer == b.tokenizer and a.dtype == b.dtype and a.args == b.args
    assert a.stats["sources"] == b.stats["sources"] and a.stats["num_tokens"] == b.stats["num_tokens"]
    # same documents, token for token, in the same order per (source, split); only the shard
    # boundaries differ (each part starts its own shards)
    da, db = read_docs(single), read_docs(parted)
    assert sorted(da) == sorted(db)
    for key in da:
        assert len(da[key]) == len(db[key]) and all(np.array_equal(x, y) for x, y in zip(da[key], db[key]))
    names = sorted(p.name for p in parted.iterdir() if p.suffix == ".bin")
    assert names == sorted(f"{e.prefix}.bin" for e in b.shards) and all("-p0" not in n for n in names)
    assert len(b.shards) >= len(a.shards)
    assert "already merged" in (prep(*base, "--out", parted, "--num-parts", 3, "--part", 0) == 0
                                and capsys.readouterr().err)

"""lai-train's bad-input matrix and the faults a kill or a typo still finds, on the real trainer in
one process (no launcher; the SIGTERM path through launch/train.sh is in test_launch_train.py):

- data: token ids at or past the vocabulary (checksum updated, as a hand edit would), bytes changed
  at the same size, ids in an older manifest's shard with data.verify=never (caught in the first
  batch), a missing tokenizer: one line naming the file (and document), exit 2, before any
  optimizer step;
- a second run into a run directory another run holds: one line naming the holder; a killed
  holder's lock file blocks nothing;
- a non-finite loss injected at given steps (pipeline.train.faults): the update is skipped, the
  step logs NaN and counts in train/skipped_steps, and too many in a row abort with one line;
- checkpoints: a complete one damaged afterwards -> a warning and the previous one; a file that
  would run code when unpickled -> refused in one line, the code never runs.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from support.faults import export_refused, fault_args, held, one_error, plant, train
from support.train import tb_scalars as scalars

pytestmark = pytest.mark.slow


def _ids_past_the_vocab(d: Path) -> str:
    """Every 50th token of a train shard set to 200 (vocab 128), the manifest's sha256 updated."""
    from pipeline.fsutil import sha256_file
    path = d / "synthetic-train-00001.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[::50] = 200
    tokens.tofile(path)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"][1]["bin_sha256"] = sha256_file(path)
    (d / "manifest.json").write_text(json.dumps(m))
    return f"error: {path}: document 0: token id 200 >= vocab size 128 "


def _ids_past_the_vocab_older_manifest(d: Path) -> str:
    """The same in a manifest of an older lai-prep (no max_id): the first batch finds it."""
    message = _ids_past_the_vocab(d)
    m = json.loads((d / "manifest.json").read_text())
    for s in m["shards"]:
        s.pop("max_id")
    (d / "manifest.json").write_text(json.dumps(m))
    return message.split("document")[0]


def _same_size_other_bytes(d: Path) -> str:
    path = d / "synthetic-train-00000.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[100:200] = 7
    tokens.tofile(path)
    return f"error: {path}: checksum does not match the manifest (its bytes changed "


def _no_tokenizer(d: Path) -> str:
    (d / "tokenizer.model").unlink()
    return f"error: {d / 'tokenizer.model'}: missing; {d / 'manifest.json'} names it "


@pytest.mark.parametrize("damage,overrides", [
    (_ids_past_the_vocab, ()),                                  # found by data.verify
    (_ids_past_the_vocab_older_manifest, ("data.verify=never",)),   # by the first batch
], ids=["verify", "batch"])
def test_bad_data_stops_before_any_optimizer_step(data, tmp_path, damage, overrides):
    d = tmp_path / "data"
    shutil.copytree(data, d)
    message = damage(d)
    run = tmp_path / "run"
    error = one_error(train(d, run, *overrides, rc=2))
    assert error.startswith(message), error
    assert not (run / "checkpoints").exists() and not (run / "final").exists()
    assert not list(run.glob("ledger/*/*.npy"))
    if not overrides:                     # refused at start-up (data.verify): no run files
        assert not (run / "config.yaml").exists() and not (run / "data.json").exists()


def _start(d: Path, run: Path, *overrides: str) -> None:
    """What the trainer does with its data before the model exists (in this process)."""
    from pipeline.comm import Comm
    from pipeline.config import load_config
    from pipeline.train.runtime import DistInfo
    from pipeline.train.setup import open_data, verify_data
    cfg = load_config(fault_args(d, run, *overrides)[0], fault_args(d, run, *overrides)[1:])
    info = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    open_data(cfg, info)
    verify_data(cfg, run, info, Comm.local())


@pytest.mark.parametrize("damage", [_same_size_other_bytes, _no_tokenizer],
                         ids=lambda f: f.__name__.strip("_"))
def test_data_checked_at_start(data, tmp_path, damage):
    from pipeline.errors import UserError
    d = tmp_path / "data"
    shutil.copytree(data, d)
    message = damage(d)
    with pytest.raises(UserError) as e:
        _start(d, tmp_path / "run")
    assert f"error: {e.value}".startswith(message) and "\n" not in str(e.value), e.value


def test_verified_data_is_read_again_only_when_it_changed(data, tmp_path, capsys):
    """data.verify=first: the first start checks every shard and records it; a later start reads
    none; a shard whose file changed since (here: its mtime) is read again; `always` reads all."""
    d, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, d)
    _start(d, run)
    assert "data.verify=first: 2 shard(s)" in capsys.readouterr().out
    record = json.loads((run / "data-verified.json").read_text())
    assert sorted(Path(k).name for k in record) == ["synthetic-train-00000", "synthetic-train-00001"]
    _start(d, run)
    assert "data.verify" not in capsys.readouterr().out
    shard = d / "synthetic-train-00001.bin"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _start(d, run)
    assert "data.verify=first: 1 shard(s)" in capsys.readouterr().out
    _start(d, run, "data.verify=always")
    assert "data.verify=always: 2 shard(s)" in capsys.readouterr().out
    _start(d, run, "data.verify=never")
    assert "data.verify" not in capsys.readouterr().out


# ---------------------------------------------------------------- one run per directory

def test_a_second_run_into_a_held_run_dir_is_refused(data, tmp_path):
    run = tmp_path / "run"
    with held(run) as pid:
        error = one_error(train(data, run, rc=2))
        assert error.startswith(f"error: run.out_dir: {run} is in use by another run (pid "
                                f"{pid} on "), error
        assert not (run / "config.yaml").exists()
    from pipeline.train.checkpointing.lock import RunLock
    assert (run / "run.lock").is_file()
    lock = RunLock(run)
    assert lock.acquire() is None                   # the dead holder's file blocks nothing
    assert RunLock(run).acquire().startswith(f"pid {os.getpid()} on ")
    lock.release()


# ---------------------------------------------------------------- non-finite losses

def test_injected_nonfinite_losses_skip_log_nan_count_and_abort(data, tmp_path):
    run = tmp_path / "run"
    p = train(data, run, "train.steps=8", "train.max_nonfinite_steps=2", rc=2,
              env={"LAI_TEST_NONFINITE_LOSS": "2,4,5"})
    assert "step 2: non-finite loss or gradient norm, update skipped (1 in a row)" in p.stdout
    assert "step 5: non-finite loss or gradient norm, update skipped (2 in a row)" in p.stdout
    assert one_error(p).startswith("error: train.max_nonfinite_steps: 2 steps in a row had a "
                                   "non-finite loss or gradient norm (last at step 5)")
    loss, skipped = scalars(run, "train/loss"), scalars(run, "train/skipped_steps")
    assert sorted(loss) == [1, 2, 3, 4, 5]
    assert np.isnan([loss[s] for s in (2, 4, 5)]).all() and np.isfinite([loss[1], loss[3]]).all()
    assert [skipped[s] for s in range(1, 6)] == [0, 1, 1, 2, 3]


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def saved(data, tmp_path_factory) -> Path:
    """A finished 4-step run with complete checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("saved") / "run"
    train(data, run)
    return run


def _copy(saved: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    return run, run / "checkpoints" / "step_00000004"


def test_damage_finds_what_makes_a_complete_checkpoint_unloadable(saved, tmp_path):
    from pipeline.train.checkpointing import checkpoint
    run, ckpt = _copy(saved, tmp_path)
    assert checkpoint.damage(ckpt) is None
    model = ckpt / "mp_rank_00_model_states.pt"
    data = model.read_bytes()
    for broken, found in (
            (lambda: model.write_bytes(data[: len(data) // 2]), "mp_rank_00_model_states.pt is damaged"),
            (lambda: model.write_bytes(bytes(len(data))), "mp_rank_00_model_states.pt is damaged"),
            (lambda: model.unlink(), "mp_rank_00_model_states.pt is missing"),
            (lambda: (ckpt / "complete.json").write_text("{"), "complete.json is unreadable"),
            (lambda: (ckpt / "complete.json").write_text("{}"), "complete.json is unreadable")):
        broken()
        assert checkpoint.damage(ckpt).startswith(found)
        shutil.rmtree(run)
        run, ckpt = _copy(saved, tmp_path)
    # a flipped byte in the pickled structure (the zip record's CRC)
    with zipfile.ZipFile(model) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    raw = bytearray(model.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, pkl.header_offset + 26)
    raw[pkl.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF      # inside data.pkl
    model.write_bytes(bytes(raw))
    assert "damaged" in checkpoint.damage(ckpt)


def test_damaged_checkpoint_falls_back_to_the_previous_one(saved, tmp_path):
    run, ckpt = _copy(saved, tmp_path)
    model = ckpt / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    p = train(_data_of(run), run, "train.steps=4")
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: run.resume:")]
    assert warnings == [f"warning: run.resume: {ckpt}: mp_rank_00_model_states.pt is damaged "
                        f"(File is not a zip file); falling back to {ckpt.parent / 'step_00000002'}"]
    assert f"resumed from {ckpt.parent / 'step_00000002'} at step 2" in p.stdout
    ref = scalars(saved, "train/loss")
    got = scalars(run, "train/loss")
    assert [got[s] for s in (3, 4)] == [ref[s] for s in (3, 4)]       # steps 3-4 again, the same
    from pipeline.train.checkpointing import checkpoint
    assert checkpoint.damage(ckpt) is None                             # step 4 saved anew


def _data_of(run: Path) -> Path:
    return Path(json.loads((run / "data.json").read_text())["sources"][0][0])


def test_damaged_checkpoint_warning_once_through_the_launcher_check(saved, tmp_path, capsys):
    """launch/train.sh runs `--check` and then the ranks: the check stays silent about a damaged
    checkpoint, which the run reports (above); --dry-run reports it once."""
    from pipeline.train.cli import main
    run, ckpt = _copy(saved, tmp_path)
    model = ckpt / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["--check", *fault_args(_data_of(run), run)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["--dry-run", *fault_args(_data_of(run), run)]) == 0
    assert capsys.readouterr().err.count("warning: run.resume: ") == 1


def test_checkpoint_files_cannot_run_code(saved, tmp_path):
    """DeepSpeed's files, read through our checkpoint engine, and our own rank file: refused in one
    line naming the file, and the payload never runs; the files as saved load."""
    from pipeline.errors import UserError
    from pipeline.train.checkpointing import safe_load
    run, ckpt = _copy(saved, tmp_path)
    for f in sorted(ckpt.glob("*.pt")):
        safe_load.load(f)                          # everything a checkpoint holds is allowed
    marker = tmp_path / "pwned"
    plant(ckpt / "rank-00000.pt", marker)
    with pytest.raises(UserError, match=rf"^{ckpt / 'rank-00000.pt'}: refused to load posix.system"):
        safe_load.load(ckpt / "rank-00000.pt")
    victim = ckpt / "mp_rank_00_model_states.pt"
    plant(victim, marker)
    error = one_error(train(_data_of(run), run, rc=2))
    assert error.startswith(f"error: {victim}: refused to load posix.system, which no "
                            "lai-train checkpoint holds"), error
    assert not marker.exists()


def test_export_of_a_crafted_or_truncated_zero0_checkpoint(saved, tmp_path, capsys):
    """lai-export reads ZeRO 0's module through the safe loader, and refuses a damaged file in
    one line (ZeRO 1-3: test_train_trust.py)."""
    run, ckpt = _copy(saved, tmp_path)
    victim, marker = ckpt / "mp_rank_00_model_states.pt", tmp_path / "pwned"
    clean = victim.read_bytes()
    plant(victim, marker)
    line = export_refused(ckpt, tmp_path / "out", capsys)
    assert line.startswith(f"error: {victim}: refused to load posix.system"), line
    assert not marker.exists()
    victim.write_bytes(clean[:1000])
    line = export_refused(ckpt, tmp_path / "out", capsys)
    assert line == f"error: {ckpt}: {victim.name} is damaged (File is not a zip file); export " \
                   "another (e.g. an earlier) checkpoint", line

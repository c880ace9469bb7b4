"""Every checkpoint load the project triggers goes through the safe loader, also where a library
reads the files (README, "Trust boundary"): lai-export of a ZeRO-1..3 checkpoint (DeepSpeed's
zero_to_fp32; ZeRO 0, our own load: test_train_faults.py), the universal conversion of a resume on another number
of ranks and a reused universal folder (DeepSpeed's converter and loader). A file that would run
code when unpickled is refused in one line and the code never runs; a damaged file is one line
for lai-export as for resume.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.faults import export_refused, plant, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero2(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("zero2") / "run"
    train(data, run, "train.steps=2", "train.zero_stage=2")
    return run / "checkpoints" / "step_00000002"


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run" / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, dst)
    return dst


OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def test_export_of_a_crafted_zero2_checkpoint_runs_no_code(zero2, tmp_path, capsys):
    """(ZeRO 0: test_train_faults.py, on its saved run.)"""
    ckpt, victim = _copy(zero2, tmp_path), OPTIM
    marker = tmp_path / "pwned"
    plant(ckpt / victim, marker)
    line = export_refused(ckpt, tmp_path / "out", capsys)
    assert line.startswith(f"error: {ckpt / victim}: refused to load posix.system"), line
    assert not marker.exists()


def test_universal_conversion_and_reuse_run_no_code(zero2, tmp_path):
    """ZeRO 2 on another number of ranks: the conversion refuses a crafted partition; a clean one
    converts, and a crafted file planted in the reused universal folder is refused too."""
    from pipeline.errors import UserError
    from pipeline.train.checkpointing import universal
    ckpt = _copy(zero2, tmp_path)
    marker = tmp_path / "pwned"
    victim = ckpt / OPTIM
    clean = victim.read_bytes()
    plant(victim, marker)
    with pytest.raises(UserError, match=rf"^{victim}: refused to load posix.system"):
        universal.ensure(ckpt, 0)
    assert not marker.exists() and not universal.folder(ckpt).exists()
    victim.write_bytes(clean)
    assert "converted to a universal checkpoint" in universal.ensure(ckpt, 0)
    assert "reused" in universal.ensure(ckpt, 0)        # what it wrote passes the safe loader
    planted = sorted(universal.folder(ckpt).rglob("fp32.pt"))[0]
    plant(planted, marker)
    with pytest.raises(UserError, match=rf"^{planted}: refused to load posix.system"):
        universal.ensure(ckpt, 0)
    assert not marker.exists()


def test_export_of_a_truncated_zero2_checkpoint_is_one_line(zero2, tmp_path, capsys):
    ckpt, victim = _copy(zero2, tmp_path), OPTIM
    f = ckpt / victim
    f.write_bytes(f.read_bytes()[:1000])
    line = export_refused(ckpt, tmp_path / "out", capsys)
    assert line.startswith(f"error: {ckpt}: {victim} is damaged ("), line
    assert line.endswith("; export another (e.g. an earlier) checkpoint"), line

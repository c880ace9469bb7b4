"""Every checkpoint load the project triggers goes through the safe loader, also where a library
reads the files (README, "Trust boundary"): lai-export of a ZeRO-0 checkpoint (our load) and of a
ZeRO-1..3 one (DeepSpeed's zero_to_fp32), the universal conversion of a resume on another number
of ranks and a reused universal folder (DeepSpeed's converter and loader). A file that would run
code when unpickled is refused in one line and the code never runs; a damaged file is one line
for lai-export as for resume.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_train_faults import _plant, data, one_error, train  # noqa: F401 -- `data`: fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero0(data, tmp_path_factory) -> Path:     # noqa: F811
    run = tmp_path_factory.mktemp("zero0") / "run"
    train(data, run, "train.steps=2")
    return run / "checkpoints" / "step_00000002"


@pytest.fixture(scope="module")
def zero2(data, tmp_path_factory) -> Path:     # noqa: F811
    run = tmp_path_factory.mktemp("zero2") / "run"
    train(data, run, "train.steps=2", "train.zero_stage=2")
    return run / "checkpoints" / "step_00000002"


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run" / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, dst)
    return dst


def _export(ckpt: Path, out: Path, capsys) -> str:
    """lai-export CKPT OUT that must be refused: its one error line."""
    from pipeline.train.export_checkpoint import main as lai_export
    with pytest.raises(SystemExit) as e:
        lai_export([str(ckpt), str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize("stage,victim", [(0, "mp_rank_00_model_states.pt"),
                                          (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt")])
def test_export_of_a_crafted_checkpoint_runs_no_code(zero0, zero2, tmp_path, capsys, stage,
                                                     victim):
    ckpt = _copy(zero0 if stage == 0 else zero2, tmp_path)
    marker = tmp_path / "pwned"
    _plant(ckpt / victim, marker)
    line = _export(ckpt, tmp_path / "out", capsys)
    assert line.startswith(f"error: {ckpt / victim}: refused to load posix.system"), line
    assert not marker.exists()


def test_universal_conversion_and_reuse_run_no_code(zero2, tmp_path):
    """ZeRO 2 on another number of ranks: the conversion refuses a crafted partition; a clean one
    converts, and a crafted file planted in the reused universal folder is refused too."""
    from pipeline.errors import UserError
    from pipeline.train import universal
    ckpt = _copy(zero2, tmp_path)
    marker = tmp_path / "pwned"
    victim = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    clean = victim.read_bytes()
    _plant(victim, marker)
    with pytest.raises(UserError, match=rf"^{victim}: refused to load posix.system"):
        universal.ensure(ckpt, 0)
    assert not marker.exists() and not universal.folder(ckpt).exists()
    victim.write_bytes(clean)
    assert "converted to a universal checkpoint" in universal.ensure(ckpt, 0)
    assert "reused" in universal.ensure(ckpt, 0)        # what it wrote passes the safe loader
    planted = sorted(universal.folder(ckpt).rglob("fp32.pt"))[0]
    _plant(planted, marker)
    with pytest.raises(UserError, match=rf"^{planted}: refused to load posix.system"):
        universal.ensure(ckpt, 0)
    assert not marker.exists()


@pytest.mark.parametrize("stage,victim", [(0, "mp_rank_00_model_states.pt"),
                                          (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt")])
def test_export_of_a_truncated_checkpoint_is_one_line(zero0, zero2, tmp_path, capsys, stage,
                                                      victim):
    ckpt = _copy(zero0 if stage == 0 else zero2, tmp_path)
    f = ckpt / victim
    f.write_bytes(f.read_bytes()[:1000])
    line = _export(ckpt, tmp_path / "out", capsys)
    assert line.startswith(f"error: {ckpt}: {victim} is damaged ("), line
    assert line.endswith("; export another (e.g. an earlier) checkpoint"), line

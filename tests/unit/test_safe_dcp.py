"""train.backend=fsdp2 reads its checkpoints with torch.distributed.checkpoint, whose reader
unpickles `.metadata` and whose planner unpickles every non-tensor item freely:
safe_load.dcp_load reads both through allow-lists (README, "Trust boundary"). A clean
checkpoint loads exactly; a crafted one is refused in one line and its code never runs (and the
same files do run code through torch's own dcp.load: the test can fail)."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from pipeline.train.checkpointing import safe_load
from support.faults import RunsCode    # unpickling it runs `touch PATH`


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():            # "no process group: loading in one process"
        warnings.simplefilter("ignore", UserWarning)
        yield


def _state():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": m.state_dict(), "optim": opt.state_dict()}


def _empty_like(state):
    return {"model": {k: torch.zeros_like(v) for k, v in state["model"].items()},
            "optim": {"state": {k: {n: torch.zeros_like(t) for n, t in s.items()}
                                for k, s in state["optim"]["state"].items()},
                      "param_groups": [{k: None for k in g} for g in state["optim"]["param_groups"]]}}


def test_a_clean_checkpoint_loads_exactly(tmp_path):
    state = _state()
    dcp.save(state, checkpoint_id=tmp_path / "ck", no_dist=True)
    got = _empty_like(state)
    safe_load.dcp_load(got, tmp_path / "ck", no_dist=True)
    for k, v in state["model"].items():
        assert torch.equal(got["model"][k], v)
    for k, s in state["optim"]["state"].items():
        assert all(torch.equal(got["optim"]["state"][k][n], t) for n, t in s.items())
    assert got["optim"]["param_groups"] == state["optim"]["param_groups"]   # bytes items


def test_crafted_metadata_is_refused_and_runs_nothing(tmp_path):
    dcp.save(_state(), checkpoint_id=tmp_path / "ck", no_dist=True)
    marker = tmp_path / "pwned"
    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointException, match=r"\.metadata: refused to load posix\.system"):
        safe_load.dcp_load(_empty_like(_state()), tmp_path / "ck", no_dist=True)
    assert not marker.exists()
    with pytest.raises(BaseException):  # noqa: B017 -- torch's own reader runs it
        dcp.load(_empty_like(_state()), checkpoint_id=tmp_path / "ck", no_dist=True)
    assert marker.exists()


def test_crafted_item_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    dcp.save({"x": RunsCode(marker)}, checkpoint_id=tmp_path / "ck", no_dist=True)
    assert not marker.exists()
    with pytest.raises(CheckpointException, match=r"refused to load an item of x"):
        safe_load.dcp_load({"x": None}, tmp_path / "ck", no_dist=True)
    assert not marker.exists()
    dcp.load({"x": None}, checkpoint_id=tmp_path / "ck", no_dist=True)   # torch's planner runs it
    assert marker.exists()


def test_lai_export_of_a_crafted_fsdp2_checkpoint_is_one_line(tmp_path, capfd):
    """load_full_model (lai-export's fsdp2 path): a UserError naming CKPT/dcp, and no traceback
    from DCP's fallback logging."""
    from pipeline.errors import UserError
    from pipeline.train.fsdp import DCP_DIR, load_full_model
    model = torch.nn.Linear(4, 3)
    dcp.save({"model": model.state_dict()}, checkpoint_id=tmp_path / DCP_DIR, no_dist=True)
    marker = tmp_path / "pwned"
    (tmp_path / DCP_DIR / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with torch.device("meta"):
        fresh = torch.nn.Linear(4, 3)
    with pytest.raises(UserError, match=rf"^{tmp_path / DCP_DIR}: cannot be read \(.*refused to "
                                        r"load posix\.system"):
        load_full_model(tmp_path, fresh)
    assert not marker.exists() and "Traceback" not in capfd.readouterr().err


def test_damage_finds_a_truncated_or_missing_dcp_shard(tmp_path):
    """checkpoint.damage reads the shard extents from the metadata (through the allow-list), so
    run.resume=auto skips a damaged fsdp2 checkpoint as it skips a damaged DeepSpeed one."""
    import json

    from pipeline.train.checkpointing import checkpoint
    ckpt = tmp_path / "step_00000001"
    dcp.save(_state(), checkpoint_id=ckpt / "dcp", no_dist=True)
    (ckpt / checkpoint.MARKER).write_text(json.dumps({"step": 1, "world": 1, "config": {},
                                                      "files": []}))
    assert checkpoint.damage(ckpt) is None
    shard = next((ckpt / "dcp").glob("*.distcp"))
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])
    assert checkpoint.damage(ckpt) == f"dcp/{shard.name} is truncated (100 of {size:,} bytes)"
    shard.unlink()
    assert checkpoint.damage(ckpt) == f"dcp/{shard.name} is missing"
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(RunsCode(tmp_path / "pwned")))
    assert checkpoint.damage(ckpt).startswith("dcp/.metadata is unreadable (UnpicklingError")
    assert not (tmp_path / "pwned").exists()

"""The lai section's blocks (issue 23): every old flat key refused in one line naming its new key
(YAML and command line), `python -m pipeline.config.migrate` and resume converting the old
layout by the same table, each block's check naming `lai.<block>.<field>`, and resolution once
(RUN/config.yaml is concrete and loads back to itself)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config, save_yaml
from pipeline.config.load import config_from_dict
from pipeline.config.migrate import main
from pipeline.config.moved import MOVED, migrate, migrate_overrides
from pipeline.errors import UserError
from pipeline.train.checkpointing.resume import resume_changes

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_key_names_its_new_one(old, tmp_path):
    with pytest.raises(UserError) as e:
        load_config(TINY, [f"{old}=1"])
    assert str(e.value).startswith(f"command line: {old}: moved to {MOVED[old]}")
    assert "\n" not in str(e.value)
    p = tmp_path / "old.yaml"
    p.write_text(f"lai:\n  {old.split('.', 1)[1]}: 1\n")
    with pytest.raises(UserError) as e:
        load_config([TINY, p])
    assert str(e.value).startswith(f"{p}: {old}: moved to {MOVED[old]}")
    assert "python -m pipeline.config.migrate" in str(e.value) and "\n" not in str(e.value)


def _old_layout(d: dict) -> dict:
    """`Config.to_dict()` output written with the flat lai keys of before (what an old
    RUN/config.yaml or checkpoint holds)."""
    out = {**d, "lai": {k: v for k, v in d["lai"].items() if not isinstance(v, dict)}}
    for old, new in MOVED.items():
        _, block, name = new.split(".")
        out["lai"][old.split(".", 1)[1]] = d["lai"][block][name]
    kind = d["lai"]["mixing"]["kind"]
    out["lai"]["mixing"], out["lai"]["mixer"] = kind != "none", "value" if kind == "none" else kind
    return out


NEW = ["lai.filter.kind=lai", "lai.filter.threshold=-0.5", "lai.memory.decay=0.25",
       "lai.score.sketch_dim=4096", "lai.mixing.kind=loss_bandit", "lai.mixing.eta=0.3",
       "lai.weighting.kind=sigmoid", "lai.warmup_steps=3", "lai.mixing.without_val=true"]


def test_migrate_rewrites_an_old_config_in_place(tmp_path, capsys):
    cfg = load_config(TINY, NEW)
    old = _old_layout(cfg.to_dict())
    assert old["lai"]["mixing"] is True and old["lai"]["mixer"] == "loss_bandit"
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(UserError, match=r"lai\.\w+: moved to lai\.\w+\.\w+"):
        load_config(p)
    assert main([str(p)]) == 0
    assert "moved lai." in capsys.readouterr().out
    assert load_config(p) == cfg
    assert [q.name for q in tmp_path.iterdir()] == ["config.yaml"]       # no temporary left
    text = p.read_text()
    assert main([str(p)]) == 0 and p.read_text() == text                 # new layout: unchanged
    assert "already in the new layout" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.yaml")]) == 2


def test_resume_compares_an_old_checkpoint_config_in_the_new_layout():
    """A checkpoint's saved config (complete.json) of the old layout: the same settings compare
    equal, a changed one is named by its new key, and it rebuilds as a Config."""
    cfg = load_config(TINY, NEW)
    old = {**_old_layout(cfg.to_dict()), "world": 1}
    assert resume_changes(old, {**cfg.to_dict(), "world": 1}) == ([], [])
    changed = load_config(TINY, [*NEW, "lai.mixing.kind=value", "lai.filter.threshold=-1"])
    breaking, allowed = resume_changes(old, {**changed.to_dict(), "world": 1})
    assert breaking == ["lai.mixing.kind: 'loss_bandit' -> 'value'"]
    assert allowed == ["lai.filter.threshold: -0.5 -> -1.0"]
    assert config_from_dict(_old_layout(cfg.to_dict())) == cfg
    assert migrate(cfg.to_dict()) == (cfg.to_dict(), [])


def test_a_recorded_old_command_line_reads_as_the_new_one():
    """What benchmarks.lib.runs compares a finished run's recorded arguments by: the old
    `bandit` variant's overrides are the new ones."""
    from benchmarks.headroom.variants import VARIANTS
    old = ["lai.enabled=false", "lai.filter=none", "lai.mixing=true", "lai.mixer=loss_bandit"]
    assert migrate_overrides(old) == VARIANTS["bandit"]
    assert migrate_overrides(["lai.mixing=false", "lai.sketch_dim=4096"]) == \
        ["lai.mixing.kind=none", "lai.score.sketch_dim=4096"]


@pytest.mark.parametrize("override, key", [
    ("lai.score.pairing=square", "lai.score.pairing"),
    ("lai.score.method=fast", "lai.score.method"),
    ("lai.score.layers=all", "lai.score.layers"),
    ("lai.score.reference=batch", "lai.score.reference"),
    ("lai.score.sketch_dim=3", "lai.score.sketch_dim"),
    ("lai.score.precondition=sgd", "lai.score.precondition"),
    ("lai.score.precondition_every=0", "lai.score.precondition_every"),
    ("lai.score.val_refresh_every=0", "lai.score.val_refresh_every"),
    ("lai.score.val_batches=0", "lai.score.val_batches"),
    ("lai.filter.kind=best", "lai.filter.kind"),
    ("lai.filter.normalize=minmax", "lai.filter.normalize"),
    ("lai.filter.max_exclude_frac=2", "lai.filter.max_exclude_frac"),
    ("lai.filter.baseline_rate=1", "lai.filter.baseline_rate"),
    ("lai.filter.oracle_sources=[spam]", "lai.filter.oracle_sources"),
    ("lai.memory.weight=-1", "lai.memory.weight"),
    ("lai.memory.decay=1", "lai.memory.decay"),
    ("lai.mixing.kind=doge", "lai.mixing.kind"),
    ("lai.mixing.eta=-1", "lai.mixing.eta"),
    ("lai.mixing.ema=1", "lai.mixing.ema"),
    ("lai.mixing.floor=2", "lai.mixing.floor"),
    ("lai.mixing.every=0", "lai.mixing.every"),
    ("lai.mixing.groups=true", "lai.mixing.groups"),
    ("lai.select.kind=all", "lai.select.kind"),
    ("lai.select.factor=1", "lai.select.factor"),
    ("lai.weighting.kind=soft", "lai.weighting.kind"),
    ("lai.weighting.temperature=0", "lai.weighting.temperature"),
    ("lai.weighting.min=3", "lai.weighting.min"),
    ("lai.unit=token", "lai.unit"),
    ("lai.warmup_steps=-1", "lai.warmup_steps"),
])
def test_each_block_check_names_its_field(override, key):
    with pytest.raises(UserError) as e:
        load_config(TINY, [override])
    assert str(e.value).startswith(f"{key}: ") and "\n" not in str(e.value), str(e.value)


def test_resolved_once_run_config_is_concrete_and_a_fixed_point(tmp_path):
    cfg = load_config(TINY, ["lai.score.reference=auto", "lai.filter.kind=lai",
                             "lai.score.pairing=pooled"])
    lai = cfg.lai
    assert (lai.score.reference, lai.score.sketch_dim, lai.filter.threshold,
            lai.memory.weight) == ("global", 4096, -1.0, 1.0)
    p = tmp_path / "config.yaml"
    p.write_text(save_yaml(cfg))                       # what RUN/config.yaml holds
    saved = yaml.safe_load(p.read_text())["lai"]
    assert saved["score"]["sketch_dim"] == 4096 and saved["filter"]["threshold"] == -1.0
    assert load_config(p) == cfg and lai.resolved(has_val=True) == lai   # nothing left to fill
    assert lai.is_resolved and not dataclasses.replace(lai, score=dataclasses.replace(
        lai.score, reference="auto")).is_resolved

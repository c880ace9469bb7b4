"""The run config: YAML + dotted overrides, type checks, validation, derived DeepSpeed JSON,
resume-change classification, the LR schedule, and the CLI's one-line errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import CHOICES, Config, load_config, save_yaml
from pipeline.errors import UserError
from pipeline.lai import FILTERS
from pipeline.train.optim import lr_at
from pipeline.train.resume import config_hash, resume_changes
from pipeline.train.setup import data_json, ds_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "manifest.json").write_text("{}")    # validate() only checks that it is prepared
    return d


def _valid(data_dir, *overrides) -> Config:
    return load_config(ROOT / "configs" / "tiny_cpu.yaml",
                       [f"data.sources=[{{path: '{data_dir}', weight: 1}}]", *overrides])


def test_shipped_configs_load_and_name_the_contract_keys():
    assert {p.name for p in CONFIGS} >= {"tiny_cpu.yaml", "gpt_neo_125m.yaml", "llama_1b.yaml"}
    for p in CONFIGS:
        cfg = load_config(p)
        assert cfg.train.steps >= 1, p
    cfg = Config()
    for key in ("run.out_dir", "run.seed", "run.resume", "run.time_limit_s", "data.sources",
                "data.seq_len", "train.steps", "train.micro_batch", "train.grad_accum",
                "train.zero_stage", "lai.enabled", "lai.filter"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
    assert tuple(FILTERS) == ("lai", "none", "random", "loss", "full_gradient")
    assert "model.family" in CHOICES


def test_zero_presets_merge_over_a_run_config(data_dir):
    presets = sorted((ROOT / "configs" / "zero").glob("*.yaml"))
    assert len(presets) >= 5
    for p in presets:
        cfg = load_config([ROOT / "configs" / "gpt_neo_125m.yaml", p],
                          [f"data.sources=[{{path: '{data_dir}'}}]"])
        assert cfg.model.n_layer == 12 and f"stage{cfg.train.zero_stage}" in p.name
        cfg.validate(world=8)


def test_overrides_are_typed(data_dir):
    cfg = _valid(data_dir, "train.steps=7", "train.lr=1e-3", "lai.enabled=false", "lai.filter=none",
                 "run.resume=/some/path", "model.family=gpt2", "train.lr=2e-3")
    assert (cfg.train.steps, cfg.train.lr, cfg.lai.enabled) == (7, 2e-3, False)
    assert cfg.run.resume == "/some/path" and cfg.model.family == "gpt2"
    assert cfg.data.sources[0].path == str(data_dir) and cfg.data.sources[0].weight == 1.0
    cfg.validate(world=2)


@pytest.mark.parametrize("override,message", [
    ("train.stpes=3", "unknown key 'train.stpes' (did you mean 'train.steps'"),
    ("trian.steps=3", "unknown key 'trian.steps' (did you mean 'train.steps'"),
    ("train=3", "unknown key 'train'"),
    ("train.steps=3.5", "train.steps: expected int, got 3.5"),
    ("train.steps=many", "train.steps: expected int, got 'many'"),
    ("lai.enabled=maybe", "lai.enabled: expected bool, got 'maybe'"),
    ("train.lr=fast", "train.lr: expected float, got 'fast'"),
    ("data.sources=3", "data.sources: expected list"),
    ("data.sources=[{path: x, wieght: 2}]", "unknown key 'data.sources[0].wieght'"),
    ("train.steps", "expected dotted.key=value"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(UserError, match=None) as e:
        load_config(ROOT / "configs" / "tiny_cpu.yaml", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_yaml_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  micro_batch: 4\n  zero_stgae: 2\n")
    with pytest.raises(UserError, match=r"c.yaml: unknown key 'train.zero_stgae' \(did you mean "
                                        r"'train.zero_stage'"):
        load_config(p)
    p.write_text("train:\n  steps: ten\n")
    with pytest.raises(UserError, match=r"c.yaml: train.steps: expected int, got 'ten'"):
        load_config(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match=r"c.yaml: invalid YAML at line"):
        load_config(p)


@pytest.mark.parametrize("overrides,field", [
    (["train.global_batch=16"], "train.global_batch"),
    (["train.zero_stage=4"], "train.zero_stage"),
    (["train.micro_batch=0"], "train.micro_batch"),
    (["train.offload_params=cpu", "train.zero_stage=2"], "train.offload_params"),
    (["train.offload_optimizer=cpu", "train.zero_stage=0"], "train.offload_optimizer"),
    (["train.precision=fp16"], "train.precision"),
    (["lai.filter=best"], "lai.filter"),
    (["lai.reference=everything"], "lai.reference"),
    (["lai.enabled=false", "lai.filter=lai"], "lai.filter"),
    (["lai.max_exclude_frac=1.5"], "lai.max_exclude_frac"),
    (["lai.sketch_dim=2"], "lai.sketch_dim"),
    (["lai.method=exact", "lai.sketch_dim=1024"], "lai.sketch_dim"),
    (["lai.pairing=default"], "lai.pairing"),
    (["lai.precondition=adam", "lai.layers=blocks"], "lai.precondition"),
    (["lai.precondition_every=0"], "lai.precondition_every"),
    (["model.hidden=65"], "model.hidden"),
    (["train.min_lr=1.0"], "train.min_lr"),
    (["model.compile=true"], "model.compile"),                        # LAI on linear layers
    (["model.compile=true", "lai.layers=blocks", "train.zero_stage=3"], "model.compile"),
])
def test_validation_names_the_field(data_dir, overrides, field):
    with pytest.raises(UserError) as e:          # the lai section already fails when it loads
        _valid(data_dir, *overrides).validate(world=3)
    assert str(e.value).startswith(f"{field}: ") and "\n" not in str(e.value), str(e.value)


def test_lai_settings_are_resolved_when_the_config_loads(data_dir):
    """No sentinels downstream: the pairing and the sketch size are concrete after loading and
    in RUN/config.yaml; sketch_dim is left unset for method=exact and kept when given."""
    cfg = _valid(data_dir)
    assert (cfg.lai.pairing, cfg.lai.method, cfg.lai.sketch_dim) == ("token_pair", "sketch", 1 << 18)
    assert "sketch_dim: 262144" in save_yaml(cfg) and "pairing: token_pair" in save_yaml(cfg)
    assert _valid(data_dir, "lai.pairing=pooled").lai.sketch_dim == 1 << 12
    assert _valid(data_dir, "lai.method=exact").lai.sketch_dim is None
    assert _valid(data_dir, "lai.sketch_dim=1024").lai.sketch_dim == 1024
    again = load_config(None, [f"data.sources=[{{path: '{data_dir}'}}]"])
    assert again.lai == load_config(None, [f"data.sources=[{{path: '{data_dir}'}}]",
                                           "lai.sketch_dim=262144"]).lai


def test_missing_data_path_fails(tmp_path, data_dir):
    cfg = _valid(data_dir, f"data.sources=[{{path: '{tmp_path / 'nope'}'}}]")
    with pytest.raises(UserError, match=r"data.sources\[0\].path: .*nope: directory not found"):
        cfg.validate()
    cfg = _valid(data_dir, f"data.sources=[{{path: '{tmp_path}'}}]")
    with pytest.raises(UserError, match=r"data.sources\[0\].path: .*no manifest.json"):
        cfg.validate()


def test_ds_config_is_derived(data_dir):
    cfg = _valid(data_dir, "train.micro_batch=3", "train.grad_accum=5", "train.zero_stage=3",
                 "train.offload_params=cpu", "train.offload_optimizer=cpu",
                 "train.precision=bf16", "train.grad_clip=0.5")
    ds = ds_config(cfg, world=4, cuda=True)
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["gradient_clipping"] == 0.5
    assert "scheduler" not in ds and "optimizer" not in ds      # our schedule, our client AdamW
    json.dumps(ds)
    dj = data_json(cfg, "abc")
    assert dj["sources"] == [[str(data_dir), 1.0]] and dj["val_sources"] == dj["sources"]
    assert dj["seq_len"] == cfg.data.seq_len and dj["seed"] == cfg.run.seed


def test_resume_changes_classified(data_dir):
    a = {**_valid(data_dir).to_dict(), "world": 2}
    cfg = _valid(data_dir, "train.steps=999", "log.every=3", "lai.threshold=0.1",
                 "run.out_dir=/elsewhere")
    b = {**cfg.to_dict(), "world": 2}
    breaking, harmless = resume_changes(a, b)
    assert breaking == [] and config_hash(a) == config_hash(b)
    assert {h.split(":")[0] for h in harmless} == {"train.steps", "log.every", "lai.threshold"}
    for override in ("model.hidden=32", "data.seq_len=64", "train.micro_batch=2",
                     "train.grad_accum=2", "train.zero_stage=3", "train.precision=bf16"):
        c = {**_valid(data_dir, override).to_dict(), "world": 2}
        breaking, _ = resume_changes(a, c)
        assert [x.split(":")[0] for x in breaking] == [override.split("=")[0]]
        assert config_hash(a) != config_hash(c)
    breaking, _ = resume_changes(a, {**a, "world": 4})
    assert breaking == ["world: 2 -> 4"]


def test_lr_schedules():
    from pipeline.config import TrainConfig
    t = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(1, t) == pytest.approx(0.1) and lr_at(10, t) == pytest.approx(1.0)
    assert lr_at(55, t) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, t) == pytest.approx(0.1)
    w = TrainConfig(steps=100, lr=1.0, min_lr=0.0, warmup_steps=10, schedule="wsd",
                    decay_frac=0.2)
    assert lr_at(50, w) == lr_at(80, w) == 1.0
    assert lr_at(90, w) == pytest.approx(0.5) and lr_at(100, w) == pytest.approx(0.0)
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=0, schedule="constant")
    assert lr_at(1, c) == lr_at(100, c) == 1.0


@pytest.mark.parametrize("args,field", [
    (["train.zero_stgae=2"], "unknown key 'train.zero_stgae'"),
    (["train.micro_batch=x"], "train.micro_batch: expected int"),
    (["train.global_batch=100"], "train.global_batch:"),
    (["lai.sketch_dim=2"], "lai.sketch_dim: must be an int >= 4, got 2"),
    (["lai.method=exact", "lai.sketch_dim=1024"], "lai.sketch_dim: 1024 is only used by"),
])
def test_cli_fails_fast_with_one_line(data_dir, args, field):
    p = subprocess.run([sys.executable, "-m", "pipeline.train",
                        str(ROOT / "configs" / "tiny_cpu.yaml"),
                        f"data.sources=[{{path: '{data_dir}'}}]", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], p.stderr


def test_reference_auto_is_val_when_the_run_has_val_data(tmp_path):
    from datagen import make_data_dir, random_docs
    docs = random_docs(30, 64, seed=0)
    with_val = make_data_dir(tmp_path / "a", docs[:20], vocab_size=64, val_docs=docs[20:])
    no_val = make_data_dir(tmp_path / "b", docs, vocab_size=64, source="other")

    def ref(*overrides):            # tiny_cpu.yaml asks for global: ask for the default
        return _valid(no_val, "lai.reference=auto", *overrides).lai.reference

    assert ref() == "global"                                     # no val data: self-influence
    assert ref(f"data.sources=[{{path: '{with_val}', weight: 1}}]") == "val"   # a val split
    assert ref(f"data.val_sources=[{{path: '{with_val}', weight: 1}}]") == "val"
    assert ref(f"data.sources=[{{path: '{with_val}', weight: 1}}]", "lai.reference=global") \
        == "global"                                              # an explicit choice stays
    assert "reference: val" in save_yaml(_valid(with_val, "lai.reference=auto"))

"""The run config: YAML + dotted overrides, type checks, validation, derived DeepSpeed JSON,
resume-change classification and the LR schedule (the CLI's one-line errors:
e2e/test_config_cli.py)."""
from __future__ import annotations

import json
import math

import pytest

from pipeline.config import CHOICES, Config, load_config, save_yaml
from pipeline.config.batch import resolve_batch
from pipeline.errors import UserError
from pipeline.lai import FILTERS
from pipeline.train.optim import lr_at
from pipeline.train.checkpointing.resume import config_hash, resume_changes
from pipeline.train.setup import data_json, ds_config
from support import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _valid(stub_data_dir, *overrides) -> Config:
    return load_config(ROOT / "configs" / "tiny_cpu.yaml",
                       [f"data.sources=[{{path: '{stub_data_dir}', weight: 1}}]", *overrides])


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
    assert tuple(FILTERS) == ("lai", "none", "random", "loss", "full_gradient", "oracle")
    assert "model.family" in CHOICES


def test_zero_presets_merge_over_a_run_config(stub_data_dir):
    presets = sorted((ROOT / "configs" / "zero").glob("*.yaml"))
    assert len(presets) >= 5
    for p in presets:
        cfg = load_config([ROOT / "configs" / "gpt_neo_125m.yaml", p],
                          [f"data.sources=[{{path: '{stub_data_dir}'}}]"])
        assert cfg.model.n_layer == 12 and f"stage{cfg.train.zero_stage}" in p.name
        cfg.validate(world=8)


def test_overrides_are_typed(stub_data_dir):
    cfg = _valid(stub_data_dir, "train.steps=7", "train.lr=1e-3", "lai.enabled=false", "lai.filter.kind=none",
                 "run.resume=/some/path", "model.family=gpt2", "train.lr=2e-3")
    assert (cfg.train.steps, cfg.train.lr, cfg.lai.enabled) == (7, 2e-3, False)
    assert cfg.run.resume == "/some/path" and cfg.model.family == "gpt2"
    assert cfg.data.sources[0].path == str(stub_data_dir) and cfg.data.sources[0].weight == 1.0
    cfg.validate(world=2)


@pytest.mark.parametrize("override,message", [
    ("train.stpes=3", "unknown key 'train.stpes' (did you mean 'train.steps'"),
    ("trian.steps=3", "unknown key 'trian.steps' (did you mean 'train.steps'"),
    ("train=3", "unknown key 'train'"),
    ("train.steps=3.5", "train.steps: expected int, got 3.5"),
    ("train.steps=2.5e0", "train.steps: expected int, got '2.5e0'"),
    ("train.steps=true", "train.steps: expected int, got True"),
    ("train.steps=many", "train.steps: expected int, got 'many'"),
    ("lai.enabled=maybe", "lai.enabled: expected a boolean (true/false, yes/no, on/off, 1/0), "
                          "got 'maybe'"),
    ("lai.enabled=2", "lai.enabled: expected a boolean"),
    ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
    ("train.lr=true", "train.lr: expected a number, got True"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.lr=1e999", "train.lr: expected a finite number, got '1e999'"),
    ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
    ("lai.filter.threshold=-.inf", "lai.filter.threshold: expected a finite number, got -inf"),
    ("run.time_limit_s=.nan", "run.time_limit_s: expected a finite number, got nan"),
    ("data.sources=[{path: x, weight: .inf}]", "data.sources[0].weight: expected a finite number"),
    ("data.sources=3", "data.sources: expected list"),
    ("data.sources=[{path: x, wieght: 2}]", "unknown key 'data.sources[0].wieght'"),
    ("train.steps", "expected dotted.key=value"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(UserError, match=None) as e:
        load_config(ROOT / "configs" / "tiny_cpu.yaml", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_booleans_floats_and_ints_read_alike_in_yaml_and_overrides(tmp_path):
    """One set of boolean spellings (pipeline.values) and numeric strings for numbers: YAML 1.1
    reads `1e-3` as a string, which a float field takes as the number it is, and `5e8` one an
    int field takes as the whole number it is."""
    for text, want in (("1", True), ("0", False), ("yes", True), ("No", False), ("ON", True),
                       ("off", False), ("true", True), ("False", False)):
        assert load_config(None, [f"lai.score.include_self={text}"]).lai.score.include_self is want, text
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-3\n  min_lr: '2.5e-4'\n  eps: 1\nlai:\n  enabled: 0\n"
                 "  filter:\n    kind: none\n  score:\n    include_self: 'yes'\n")
    cfg = load_config(p)
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.eps) == (1e-3, 2.5e-4, 1.0)
    assert type(cfg.train.eps) is float
    assert cfg.lai.enabled is False and cfg.lai.score.include_self is True
    p.write_text("train:\n  reduce_bucket_size: 5e8\n  allgather_bucket_size: 2.0e+8\n")
    cfg = load_config(p, ["train.steps=1e3"])
    assert (cfg.train.reduce_bucket_size, cfg.train.allgather_bucket_size, cfg.train.steps) == \
        (500_000_000, 200_000_000, 1000)
    assert type(cfg.train.reduce_bucket_size) is int and type(cfg.train.steps) is int
    p.write_text("train:\n  lr: .inf\n")
    with pytest.raises(UserError, match=r"c.yaml: train.lr: expected a finite number, got inf"):
        load_config(p)


def test_lai_prep_reads_booleans_the_same_way():
    from data_prep.__main__ import _prep_parser
    from data_prep.sources import parse_source
    parser = _prep_parser("lai-prep", partitioned=False)
    a = parser.parse_args(["--out", "x", "--byte-fallback", "off", "--progress", "Yes"])
    assert a.byte_fallback is False and a.progress is True
    assert parse_source("stdlib,tests=ON").tests is True
    assert parse_source("hf:x:train,streaming=false").streaming is False
    with pytest.raises(UserError, match=r"--source stdlib,tests=maybe: tests: expected a boolean "
                                        r".*got 'maybe'"):
        parse_source("stdlib,tests=maybe")
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--out", "x", "--progress", "maybe"])
    assert e.value.code == 2


@pytest.mark.parametrize("text,message", [
    ("train:\n  micro_batch: 4\n  zero_stgae: 2\n",
     r"c.yaml: unknown key 'train.zero_stgae' \(did you mean 'train.zero_stage'"),
    ("train:\n  steps: ten\n", r"c.yaml: train.steps: expected int, got 'ten'"),
    ("train: [1, 2\n", r"c.yaml: invalid YAML at line"),
    ("train:\n  lr: 1.0e-3\n  steps: 3\n  lr: 2.0e-3\n",          # plain YAML keeps the last
     r"c.yaml: duplicate key 'lr' at line 4 \(given twice in one section; keep one\)$"),
    ("train:\n  lr: 1.0e-3\nlai: {}\ntrain:\n  steps: 3\n", r"c.yaml: duplicate key 'train' at line 4"),
])
def test_bad_yaml_names_file_and_key(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(p)


@pytest.mark.parametrize("overrides,field", [
    (["train.global_batch=15"], "train.global_batch"),
    (["train.grad_accum=3"], "train.global_batch"),
    (["train.zero_stage=4"], "train.zero_stage"),
    (["train.micro_batch=0"], "train.micro_batch"),
    (["train.offload_params=cpu", "train.zero_stage=2"], "train.offload_params"),
    (["train.offload_optimizer=cpu", "train.zero_stage=0"], "train.offload_optimizer"),
    (["train.precision=fp16"], "train.precision"),
    (["lai.filter.kind=best"], "lai.filter.kind"),
    (["lai.score.reference=everything"], "lai.score.reference"),
    (["lai.enabled=false", "lai.filter.kind=lai"], "lai.filter.kind"),
    (["lai.filter.max_exclude_frac=1.5"], "lai.filter.max_exclude_frac"),
    (["run.seed=-1"], "run.seed"),
    (["run.seed=4294967296"], "run.seed"),
    (["lai.score.sketch_dim=2"], "lai.score.sketch_dim"),
    (["lai.score.method=exact", "lai.score.sketch_dim=1024"], "lai.score.sketch_dim"),
    (["lai.score.pairing=default"], "lai.score.pairing"),
    (["lai.score.precondition=adam", "lai.score.layers=blocks"], "lai.score.precondition"),
    (["lai.score.precondition_every=0"], "lai.score.precondition_every"),
    (["model.hidden=65"], "model.hidden"),
    (["train.min_lr=1.0"], "train.min_lr"),
    (["model.compile=true", "train.zero_stage=3"], "model.compile"),
    (["train.backend=torch"], "train.backend"),
    (["train.backend=fsdp2", "train.zero_stage=1"], "train.zero_stage"),     # no FSDP2 meaning
    (["train.backend=fsdp2", "train.zero_stage=3", "train.offload_optimizer=cpu"],
     "train.offload_optimizer"),
    (["train.backend=fsdp2", "lai.filter.kind=full_gradient"], "lai.filter.kind"),
    (["train.zero_stage=0", "train.overlap_comm=false"], "train.overlap_comm"),   # ignored there
    (["train.reduce_bucket_size=-1"], "train.reduce_bucket_size"),
    (["train.zero_stage=3", "train.allgather_bucket_size=100"], "train.allgather_bucket_size"),
    (["train.zero_stage=2", "train.prefetch_bucket_size=100"], "train.prefetch_bucket_size"),
    (["train.backend=fsdp2", "train.zero_stage=3", "train.contiguous_gradients=true"],
     "train.contiguous_gradients"),
])
def test_validation_names_the_field(stub_data_dir, overrides, field):
    with pytest.raises(UserError) as e:          # the lai section already fails when it loads
        _valid(stub_data_dir, *overrides).validate(world=2)
    assert str(e.value).startswith(f"{field}: ") and "\n" not in str(e.value), str(e.value)


def test_fsdp2_accepts_the_zero_settings_it_maps(stub_data_dir):
    for extra in (["train.zero_stage=2"], ["train.zero_stage=3", "train.offload_params=cpu"],
                  ["train.zero_stage=3", "model.compile=true"]):
        _valid(stub_data_dir, "train.backend=fsdp2", *extra).validate(world=2)


def test_lai_settings_are_resolved_when_the_config_loads(stub_data_dir):
    """No sentinels downstream: the pairing and the sketch size are concrete after loading and
    in RUN/config.yaml; sketch_dim is left unset for method=exact and kept when given."""
    cfg = _valid(stub_data_dir)
    assert (cfg.lai.score.pairing, cfg.lai.score.method, cfg.lai.score.sketch_dim) == ("token_pair", "sketch", 1 << 18)
    assert "sketch_dim: 262144" in save_yaml(cfg) and "pairing: token_pair" in save_yaml(cfg)
    assert _valid(stub_data_dir, "lai.score.pairing=pooled").lai.score.sketch_dim == 1 << 12
    assert _valid(stub_data_dir, "lai.score.method=exact").lai.score.sketch_dim is None
    assert _valid(stub_data_dir, "lai.score.sketch_dim=1024").lai.score.sketch_dim == 1024
    again = load_config(None, [f"data.sources=[{{path: '{stub_data_dir}'}}]"])
    assert again.lai == load_config(None, [f"data.sources=[{{path: '{stub_data_dir}'}}]",
                                           "lai.score.sketch_dim=262144"]).lai


def test_missing_data_path_fails(tmp_path, stub_data_dir):
    cfg = _valid(stub_data_dir, f"data.sources=[{{path: '{tmp_path / 'nope'}'}}]")
    with pytest.raises(UserError, match=r"data.sources\[0\].path: .*nope: directory not found; "
                       r"prepare it first: lai-prep --source \.\.\. --out .*nope$"):
        cfg.validate()
    cfg = _valid(stub_data_dir, f"data.sources=[{{path: '{tmp_path}'}}]")
    with pytest.raises(UserError, match=r"data.sources\[0\].path: .*no manifest.json"):
        cfg.validate()


def test_ds_config_is_derived(stub_data_dir):
    cfg = _valid(stub_data_dir, "train.micro_batch=3", "train.grad_accum=5", "train.zero_stage=3",
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
    for key in ("overlap_comm", "contiguous_gradients", "reduce_bucket_size"):
        assert key not in ds["zero_optimization"]                # unset: DeepSpeed's defaults
    json.dumps(ds)
    cfg = _valid(stub_data_dir, "train.zero_stage=3", "train.overlap_comm=false",
                 "train.reduce_bucket_size=123", "train.prefetch_bucket_size=77")
    zero = ds_config(cfg, world=4, cuda=True)["zero_optimization"]
    assert zero == {"stage": 3, "overlap_comm": False, "reduce_bucket_size": 123,
                    "stage3_prefetch_bucket_size": 77}
    dj = data_json(cfg, "abc")
    assert dj["sources"] == [[str(stub_data_dir), 1.0]] and dj["val_sources"] == dj["sources"]
    assert dj["seq_len"] == cfg.data.seq_len and dj["seed"] == cfg.run.seed


def test_resume_changes_classified(stub_data_dir):
    a = {**_valid(stub_data_dir).to_dict(), "world": 2}
    cfg = _valid(stub_data_dir, "train.steps=999", "log.every=3", "lai.filter.threshold=0.1",
                 "run.out_dir=/elsewhere")
    b = {**cfg.to_dict(), "world": 2}
    breaking, harmless = resume_changes(a, b)
    assert breaking == [] and config_hash(a) == config_hash(b)
    assert {h.split(":")[0] for h in harmless} == {"train.steps", "log.every", "lai.filter.threshold"}
    for override in ("model.hidden=32", "data.seq_len=64", "train.global_batch=32",
                     "train.zero_stage=3", "train.precision=bf16", "train.backend=fsdp2"):
        c = {**_valid(stub_data_dir, override).to_dict(), "world": 2}
        breaking, _ = resume_changes(a, c)
        assert [x.split(":")[0] for x in breaking] == [override.split("=")[0]]
        assert config_hash(a) != config_hash(c)
    # another number of ranks: allowed (noted) when the global batch stays; the batch of a
    # checkpoint saved before global_batch was always filled is micro x accumulation x ranks
    b = _valid(stub_data_dir).validate(world=1).to_dict()
    breaking, allowed = resume_changes({**a, "world": 2}, {**b, "world": 1})
    assert breaking == [] and config_hash({**a, "world": 2}) == config_hash({**b, "world": 1})
    assert {x.split(":")[0] for x in allowed} == {"train.grad_accum", "world"}
    old = {**a, "world": 2, "train": {**a["train"], "global_batch": 0, "grad_accum": 1}}
    assert resume_changes(old, {**b, "world": 1})[0] == []          # 8 x 1 x 2 = 16
    old["train"]["grad_accum"] = 2
    assert resume_changes(old, {**b, "world": 1})[0] == ["train.global_batch: 32 -> 16"]
    for key in ("backend", "reduce_bucket_size", "overlap_comm"):   # saved before they
        del old["train"][key]                                         # existed: the defaults
    assert "train.backend" not in str(resume_changes(old, {**b, "world": 1}))
    assert "bucket" not in str(resume_changes(old, {**b, "world": 1}))
    changed = {**b, "train": {**b["train"], "reduce_bucket_size": 5}}
    assert "train.reduce_bucket_size: 0 -> 5" in resume_changes(old, {**changed, "world": 1})[1]


def test_batch_triple_is_derived_from_the_global_batch():
    from pipeline.config import TrainConfig
    for world, triple in ((1, (8, 2)), (2, (8, 1)), (4, (4, 1)), (8, (2, 1)), (16, (1, 1))):
        t = TrainConfig(global_batch=16, micro_batch=8)
        resolve_batch(t, world)
        assert (t.micro_batch, t.grad_accum, t.global_batch) == (*triple, 16), world
    t = TrainConfig(global_batch=12, micro_batch=8)      # the largest micro batch that divides
    resolve_batch(t, 1)
    assert (t.micro_batch, t.grad_accum) == (6, 2)
    t = TrainConfig(micro_batch=4, grad_accum=3)         # explicit accumulation: the product
    resolve_batch(t, 2)
    assert t.global_batch == 24
    with pytest.raises(UserError, match="16 sequences do not split evenly over 3 ranks"):
        resolve_batch(TrainConfig(global_batch=16), 3)
    with pytest.raises(UserError, match=r"train.global_batch: 16 != .* = 24 \(set train.grad_accum=0"):
        resolve_batch(TrainConfig(global_batch=16, micro_batch=4, grad_accum=3), 2)


def test_every_shipped_config_states_its_global_batch():
    """On any number of ranks that divides it, a shipped config trains its stated global batch
    (llama_1b: 512 on 8 GPUs, not 8 x 2 x 8 = 128)."""
    for p in CONFIGS:
        cfg = load_config(p)
        stated = cfg.train.global_batch
        header = [line for line in p.read_text().splitlines() if line.startswith("#")]
        assert stated > 0 and any(f"Global batch = {stated} " in h for h in header), p
        for world in (1, 2, 8):
            t = load_config(p).train
            resolve_batch(t, world)
            assert t.micro_batch * t.grad_accum * world == stated, (p, world)
    llama = load_config(ROOT / "configs" / "llama_1b.yaml")
    resolve_batch(llama.train, 8)
    assert (llama.train.micro_batch, llama.train.grad_accum) == (8, 8)


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


def test_reference_auto_is_val_when_the_run_has_val_data(tmp_path):
    from support.datagen import make_data_dir, random_docs
    docs = random_docs(30, 64, seed=0)
    with_val = make_data_dir(tmp_path / "a", docs[:20], vocab_size=64, val_docs=docs[20:])
    no_val = make_data_dir(tmp_path / "b", docs, vocab_size=64, source="other")

    def ref(*overrides):            # tiny_cpu.yaml asks for global: ask for the default
        return _valid(no_val, "lai.score.reference=auto", *overrides).lai.score.reference

    assert ref() == "global"                                     # no val data: self-influence
    assert ref(f"data.sources=[{{path: '{with_val}', weight: 1}}]") == "val"   # a val split
    assert ref(f"data.val_sources=[{{path: '{with_val}', weight: 1}}]") == "val"
    assert ref(f"data.sources=[{{path: '{with_val}', weight: 1}}]", "lai.score.reference=global") \
        == "global"                                              # an explicit choice stays
    assert "reference: val" in save_yaml(_valid(with_val, "lai.score.reference=auto"))

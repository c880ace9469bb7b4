"""The run config: typed dataclasses, loaded from YAML, overridden by `dotted.key=value`, validated,
and the source of the DeepSpeed JSON (never written by hand).

    cfg = load_config("configs/tiny_cpu.yaml", ["train.steps=20", "lai.filter=random"])
    cfg.validate(world=2)                      # batch triple, ranges, data paths, LAI options
    ds_config(cfg, world=2, cuda=False)        # the DeepSpeed JSON dict (no scheduler in it)

Every error is a `UserError` naming the file/field: an unknown key (with close matches), a value of
the wrong type, an out-of-range or inconsistent value.

Resuming: `resume_changes(old, new)` splits the differences between a checkpoint's config and the
current one into those that break resumption (model shape, sequence length, batch layout, data,
precision, ZeRO layout) and harmless ones (steps, LR, log cadence, LAI options).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError


@dataclass
class RunConfig:
    out_dir: str = "runs/default"      # RUN directory (config, checkpoints, tb, ledger, final)
    seed: int = 0                      # model init and every RNG of the run
    resume: str = "auto"               # auto (latest complete checkpoint, if any) | never | PATH
    time_limit_s: float = 0.0          # > 0: save and exit 75 once this much wall time has passed
    save_every: int = 100              # checkpoint every N steps (0 = only at the end / on stop)
    keep_checkpoints: int = 3          # complete checkpoints kept (oldest removed)


@dataclass
class SourceConfig:
    path: str = ""                     # prepared data directory (output of lai-prep)
    weight: float = 1.0                # mixing weight


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    val_sources: list[SourceConfig] = field(default_factory=list)   # empty = same as sources
    seq_len: int = 128


@dataclass
class ModelConfig:
    family: str = "llama"              # llama | gpt_neox | gpt2 | gpt_neo
    n_layer: int = 2
    hidden: int = 64
    n_head: int = 2
    n_kv_head: int = 0                 # llama grouped-query heads; 0 = n_head
    intermediate: int = 0              # MLP width; 0 = family default (4*hidden; llama: 8/3*hidden)
    tie_word_embeddings: bool = True
    activation_checkpointing: bool = False
    compile: bool = False              # torch.compile each transformer block's forward (the LM
                                       # head, loss and LAI stay eager); with LAI: lai.layers=blocks
    rope_theta: float = 10000.0        # llama / gpt_neox


@dataclass
class TrainConfig:
    steps: int = 100                   # optimizer steps
    micro_batch: int = 4               # sequences per rank per micro-step
    grad_accum: int = 1                # micro-steps per optimizer step (owned by DeepSpeed)
    global_batch: int = 0              # optional check: must equal micro_batch*grad_accum*world
    zero_stage: int = 0
    offload_optimizer: str = "none"    # none | cpu   (ZeRO >= 1)
    offload_params: str = "none"       # none | cpu   (ZeRO 3)
    precision: str = "fp32"            # fp32 | bf16
    lr: float = 3e-4
    min_lr: float = 3e-5
    schedule: str = "cosine"           # cosine | wsd (warmup-stable-decay) | constant; all warm up
    warmup_steps: int = 10
    decay_frac: float = 0.2            # wsd: fraction of the steps spent in the final decay
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0             # 0 = off
    max_nonfinite_steps: int = 5       # abort after this many skipped (non-finite) steps in a row
    eval_every: int = 50               # 0 = no eval
    eval_batches: int = 4              # micro-batches per rank per eval


@dataclass
class LAIConfig:
    enabled: bool = True               # compute LAI values (and filter with them if filter=lai)
    filter: str = "lai"                # lai | none | random | loss | full_gradient (what decides
                                       # the mask; full_gradient: the exact full-gradient inner
                                       # product, a small-model evaluation reference, no ZeRO-3)
    pairing: str = "default"           # token_pair | aligned | pooled | default (the LAI default)
    method: str = "sketch"             # sketch (scales: T-independent traffic) | exact
    layers: str = "linear"             # linear | blocks
    reference: str = "global"          # local | global | val
    include_self: bool = False
    sketch_dim: int = 0                # method=sketch: sketch size (0 = the LAI module's default)
    compile: bool = True               # method=sketch on CUDA: torch.compile the sketch kernels
    threshold: float = 0.0             # value <= threshold -> excluded
    warmup_steps: int = 0              # no filtering before this step
    max_exclude_frac: float = 0.1      # cap on the excluded fraction of each global micro-batch
                                       # (0.5 hurt val loss in docs/RESULTS.md; 0.1 did not)
    baseline_rate: float = 0.1         # filter=random: exclusion probability; filter=loss: the
                                       # fraction of highest-loss sequences excluded
    val_refresh_every: int = 100       # reference=val: recompute the val features every N steps
    val_batches: int = 2               # reference=val: micro-batches per rank in the reference


@dataclass
class LogConfig:
    every: int = 10                    # TensorBoard scalar cadence (steps)
    histogram_every: int = 50          # LAI value histogram cadence (steps)
    peak_tflops: float = 0.0           # per-device peak for MFU (989: H100 bf16); 0 = no MFU
    ledger_chunk_rows: int = 4096


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lai: LAIConfig = field(default_factory=LAIConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world: int = 1) -> Config:
        validate(self, world)
        return self


CHOICES: dict[str, tuple[str, ...]] = {
    "model.family": ("llama", "gpt_neox", "gpt2", "gpt_neo"),
    "train.offload_optimizer": ("none", "cpu"),
    "train.offload_params": ("none", "cpu"),
    "train.precision": ("fp32", "bf16"),
    "train.schedule": ("cosine", "wsd", "constant"),
    "lai.filter": ("lai", "none", "random", "loss", "full_gradient"),
    "lai.method": ("exact", "sketch"),
    "lai.layers": ("linear", "blocks"),
    "lai.reference": ("local", "global", "val"),
}

# Differences that make a checkpoint unusable (refused); every other difference is warned about.
# run.out_dir / run.resume are where and how, not what: never compared.
RESUME_BREAKING = ("model.", "data.", "run.seed", "train.micro_batch", "train.grad_accum",
                   "train.zero_stage", "train.precision", "train.offload_optimizer",
                   "train.offload_params", "world")
RESUME_IGNORED = ("run.out_dir", "run.resume")


# ---------------------------------------------------------------- loading and overrides

def _fields(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def _all_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    for name, f in _fields(cls).items():
        if dataclasses.is_dataclass(f.type):
            keys += _all_keys(f.type, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown(key: str, where: str) -> UserError:
    close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return UserError(f"{where}: unknown key {key!r}{hint}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp, key: str, where: str) -> Any:
    """`value` (from YAML) as type `tp`, or a UserError naming `key`. No silent conversions except
    int -> float."""
    bad = UserError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key}: expected a mapping, got {value!r}")
        return _build(tp, value, f"{key}.", where)
    raise AssertionError(f"unsupported config type {tp}")


def _build(cls, d: dict, prefix: str, where: str):
    fields = _fields(cls)
    kwargs = {}
    for k, v in d.items():
        if k not in fields:
            raise _unknown(f"{prefix}{k}", where)
        kwargs[k] = _coerce(v, fields[k].type, f"{prefix}{k}", where)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    where = f"override {key}"
    parent, tp = Config, None
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(parent)
        if part not in fields:
            raise _unknown(key, "command line")
        tp = fields[part].type
        if dataclasses.is_dataclass(tp) and i < len(parts) - 1:
            parent = tp
        elif i < len(parts) - 1 or dataclasses.is_dataclass(tp):
            raise _unknown(key, "command line")
    if tp is str:
        return key, raw                       # strings verbatim: paths, "auto", "1e-3" as text
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"{where}: cannot parse value {raw!r}") from None
    if tp is float and isinstance(value, str):   # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key, _coerce(value, tp, key, "command line")


def _set(cfg: Config, key: str, value: Any) -> None:
    *path, last = key.split(".")
    obj = cfg
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def _read_yaml(p: Path) -> dict:
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"{p}: cannot read config: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}: invalid YAML{at}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of sections (run, data, model, ...)")
    _build(Config, data, "", str(p))          # unknown keys / wrong types, named in this file
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(paths: str | Path | list[str | Path] | None = None,
                overrides: list[str] = ()) -> Config:
    """The config of the YAML file(s) `paths` (merged in order, later files win: a run config then
    presets such as configs/zero/stage3.yaml; None = all defaults) with `overrides`
    ("a.b=value") applied. Unknown keys and wrong types raise UserError; ranges are checked by
    `validate`."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict = {}
    for p in paths:
        data = _merge(data, _read_yaml(Path(p)))
    cfg = _build(Config, data, "", str(paths[-1]) if paths else "config")
    for text in overrides:
        key, value = _parse_override(text)
        _set(cfg, key, value)
    return cfg


def config_from_dict(d: dict, where: str = "config") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. from a checkpoint)."""
    return _build(Config, d, "", where)


def save_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- validation

def validate(cfg: Config, world: int = 1) -> None:
    """Raise UserError naming the first bad field. `world` = data-parallel ranks."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(f"{key}: {what}")

    for key, choices in CHOICES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        need(v in choices, key, f"{v!r} is not one of {', '.join(choices)}")

    r, d, m, t, lai, log = cfg.run, cfg.data, cfg.model, cfg.train, cfg.lai, cfg.log
    need(r.resume in ("auto", "never") or bool(r.resume), "run.resume", "auto | never | PATH")
    need(r.time_limit_s >= 0, "run.time_limit_s", f"must be >= 0, got {r.time_limit_s}")
    need(r.save_every >= 0, "run.save_every", f"must be >= 0, got {r.save_every}")
    need(r.keep_checkpoints >= 1, "run.keep_checkpoints", f"must be >= 1, got {r.keep_checkpoints}")
    need(bool(r.out_dir), "run.out_dir", "must be set")

    need(len(d.sources) > 0, "data.sources", "no data sources (a list of {path, weight})")
    for name, sources in (("data.sources", d.sources), ("data.val_sources", d.val_sources)):
        for i, s in enumerate(sources):
            key = f"{name}[{i}]"
            need(bool(s.path), f"{key}.path", "must be set")
            need(s.weight > 0, f"{key}.weight", f"must be > 0, got {s.weight}")
            need(Path(s.path).is_dir(), f"{key}.path", f"{s.path}: directory not found")
            need((Path(s.path) / "manifest.json").is_file(), f"{key}.path",
                 f"{s.path}: not a prepared data directory (no manifest.json; run lai-prep)")
    need(d.seq_len >= 2, "data.seq_len", f"must be >= 2, got {d.seq_len}")

    for key in ("n_layer", "hidden", "n_head"):
        need(getattr(m, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(m, key)}")
    need(m.hidden % m.n_head == 0, "model.hidden",
         f"{m.hidden} is not divisible by model.n_head={m.n_head}")
    need(m.n_kv_head >= 0, "model.n_kv_head", f"must be >= 0, got {m.n_kv_head}")
    need(m.n_kv_head == 0 or m.n_head % m.n_kv_head == 0, "model.n_kv_head",
         f"model.n_head={m.n_head} is not divisible by {m.n_kv_head}")
    need(m.n_kv_head == 0 or m.family == "llama", "model.n_kv_head",
         f"grouped-query heads need family llama, not {m.family}")
    need(m.intermediate >= 0, "model.intermediate", f"must be >= 0, got {m.intermediate}")

    for key in ("steps", "micro_batch", "grad_accum", "eval_batches", "max_nonfinite_steps"):
        need(getattr(t, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    need(0 <= t.zero_stage <= 3, "train.zero_stage", f"must be 0, 1, 2 or 3, got {t.zero_stage}")
    need(t.global_batch in (0, t.micro_batch * t.grad_accum * world), "train.global_batch",
         f"{t.global_batch} != train.micro_batch ({t.micro_batch}) x train.grad_accum "
         f"({t.grad_accum}) x ranks ({world}) = {t.micro_batch * t.grad_accum * world}")
    need(t.offload_optimizer == "none" or t.zero_stage >= 1, "train.offload_optimizer",
         "needs train.zero_stage >= 1")
    need(t.offload_params == "none" or t.zero_stage == 3, "train.offload_params",
         "needs train.zero_stage = 3")
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    need(0 <= t.min_lr <= t.lr, "train.min_lr", f"must be in [0, train.lr={t.lr}], got {t.min_lr}")
    need(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
    need(0 < t.decay_frac <= 1, "train.decay_frac", f"must be in (0, 1], got {t.decay_frac}")
    need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    need(0 <= t.beta1 < 1, "train.beta1", f"must be in [0, 1), got {t.beta1}")
    need(0 <= t.beta2 < 1, "train.beta2", f"must be in [0, 1), got {t.beta2}")
    need(t.eps > 0, "train.eps", f"must be > 0, got {t.eps}")
    need(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0, got {t.grad_clip}")
    need(t.eval_every >= 0, "train.eval_every", f"must be >= 0, got {t.eval_every}")

    need(lai.enabled or lai.filter != "lai", "lai.filter",
         "'lai' needs lai.enabled=true (or use none | random | loss | full_gradient)")
    need(lai.filter != "full_gradient" or t.zero_stage != 3, "lai.filter",
         "'full_gradient' (exact per-sample gradients of the whole model on every rank: a "
         "small-model evaluation reference) needs full parameters; not with train.zero_stage=3")
    if lai.enabled and lai.pairing != "default":
        from pipeline import lai as lai_mod
        pairings = getattr(lai_mod, "PAIRINGS", None)
        need(pairings is None or lai.pairing in pairings, "lai.pairing",
             f"{lai.pairing!r} is not one of default, {', '.join(pairings or ())}")
    need(not (m.compile and lai.enabled and lai.layers == "linear"), "model.compile",
         "compiled blocks hide their linear layers from LAI's input hooks; use lai.layers=blocks "
         "(the block inputs stay visible) or model.compile=false")
    need(not (m.compile and t.zero_stage == 3), "model.compile",
         "not with train.zero_stage=3 (its parameter hooks run inside the blocks)")
    need(lai.sketch_dim >= 0, "lai.sketch_dim", f"must be >= 0, got {lai.sketch_dim}")
    need(lai.warmup_steps >= 0, "lai.warmup_steps", f"must be >= 0, got {lai.warmup_steps}")
    need(0 <= lai.max_exclude_frac < 1, "lai.max_exclude_frac",
         f"must be in [0, 1), got {lai.max_exclude_frac}")
    need(0 <= lai.baseline_rate < 1, "lai.baseline_rate",
         f"must be in [0, 1), got {lai.baseline_rate}")
    need(lai.filter not in ("random", "loss") or lai.baseline_rate <= lai.max_exclude_frac,
         "lai.baseline_rate", f"{lai.baseline_rate} exceeds lai.max_exclude_frac "
         f"{lai.max_exclude_frac}, which caps every filter; raise lai.max_exclude_frac")
    need(lai.val_refresh_every >= 1, "lai.val_refresh_every",
         f"must be >= 1, got {lai.val_refresh_every}")
    need(lai.val_batches >= 1, "lai.val_batches", f"must be >= 1, got {lai.val_batches}")

    need(log.every >= 1, "log.every", f"must be >= 1, got {log.every}")
    need(log.histogram_every >= 0, "log.histogram_every",
         f"must be >= 0, got {log.histogram_every}")
    need(log.peak_tflops >= 0, "log.peak_tflops", f"must be >= 0, got {log.peak_tflops}")
    need(log.ledger_chunk_rows >= 1, "log.ledger_chunk_rows",
         f"must be >= 1, got {log.ledger_chunk_rows}")


# ---------------------------------------------------------------- derived files

def ds_config(cfg: Config, world: int, cuda: bool) -> dict[str, Any]:
    """The DeepSpeed JSON. No optimizer/scheduler sections: the client AdamW is built by the
    trainer and the LR schedule (ours) sets its lr every step."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": t.offload_optimizer, "pin_memory": cuda}
    if t.offload_params != "none":
        zero["offload_param"] = {"device": t.offload_params, "pin_memory": cuda}
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * world,
        "gradient_clipping": t.grad_clip,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # the client optimizer is AdamW plus our skip guard (a subclass, which DeepSpeed calls
        # "untested"); on CPU it may also run on offloaded states (no DeepSpeed CPU Adam build)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": cuda,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def data_json(cfg: Config, fingerprint: str | None = None) -> dict[str, Any]:
    """RUN/data.json: exactly PackedDataset's arguments, for lai-report to rebuild the dataset
    (plus the train dataset's fingerprint, so re-prepared data is detected)."""
    val = cfg.data.val_sources or cfg.data.sources
    extra = {"fingerprint": fingerprint} if fingerprint else {}
    return {**extra, "sources": [[s.path, s.weight] for s in cfg.data.sources],
            "val_sources": [[s.path, s.weight] for s in val],
            "seq_len": cfg.data.seq_len, "seed": cfg.run.seed}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg_dict: dict[str, Any]) -> str:
    """sha256 of the fields that must not change across a resume (see RESUME_BREAKING)."""
    flat = {k: v for k, v in _flatten(cfg_dict).items() if k.startswith(RESUME_BREAKING)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def resume_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, harmless) differences between two `to_dict()`s (plus a "world" key), each as
    "key: old -> new" strings."""
    a, b = _flatten(old), _flatten(new)
    breaking, harmless = [], []
    for k in sorted(set(a) | set(b)):
        if k.startswith(RESUME_IGNORED) or a.get(k) == b.get(k):
            continue
        line = f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        (breaking if k.startswith(RESUME_BREAKING) else harmless).append(line)
    return breaking, harmless

"""The whole run config (Config: the schema's sections) and its validation: ranges, choices and
cross-field rules, before anything starts. The first bad field raises a one-line UserError
`<field>: <what is wrong>`; the lai section was checked when it was resolved (each block's
check, pipeline.lai.selection.settings); here only its rules with the other sections."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.batch import pool_size, resolve_batch
from pipeline.config.schema import (CHOICES, DataConfig, LogConfig, ModelConfig, RunConfig,
                                    TrainConfig)
from pipeline import errors
from pipeline.errors import UserError
from pipeline.lai.selection.baselines import FILTERS
from pipeline.lai.selection.settings import LAISettings

MAX_SEED = 2**31 - 1         # numpy's legacy seed takes [0, 2**32); headroom for derived seeds


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lai: LAISettings = field(default_factory=LAISettings)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world: int = 1) -> Config:
        """Check every field and fill the batch triple for `world` ranks (pipeline.config.batch)."""
        validate(self, world)
        return self


need = functools.partial(errors.need, error=UserError)   # the run config's checks: UserError


def validate(cfg: Config, world: int = 1) -> None:
    """Raise UserError naming the first bad field; fills the batch triple for `world`
    data-parallel ranks (pipeline.config.batch)."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        need(v in choices, key, f"{v!r} is not one of {', '.join(choices)}")
    _run(cfg)
    _data(cfg)
    _model(cfg)
    _train(cfg, world)
    _lai(cfg, world)
    _log(cfg)


def _run(cfg: Config) -> None:
    r = cfg.run
    need(r.resume in ("auto", "never") or bool(r.resume), "run.resume", "auto | never | PATH")
    need(r.time_limit_s >= 0, "run.time_limit_s", f"must be >= 0, got {r.time_limit_s}")
    need(r.save_every >= 0, "run.save_every", f"must be >= 0, got {r.save_every}")
    need(r.keep_checkpoints >= 1, "run.keep_checkpoints", f"must be >= 1, got {r.keep_checkpoints}")
    need(bool(r.out_dir), "run.out_dir", "must be set")
    need(not Path(r.out_dir).exists() or Path(r.out_dir).is_dir(), "run.out_dir",
         f"{r.out_dir} exists and is not a directory; choose another run.out_dir")
    need(0 <= r.seed <= MAX_SEED, "run.seed", f"must be in [0, {MAX_SEED}], got {r.seed}")


def _data(cfg: Config) -> None:
    d = cfg.data
    need(len(d.sources) > 0, "data.sources", "no data sources (a list of {path, weight})")
    for name, sources in (("data.sources", d.sources), ("data.val_sources", d.val_sources)):
        for i, s in enumerate(sources):
            key = f"{name}[{i}]"
            need(bool(s.path), f"{key}.path", "must be set")
            need(s.weight > 0, f"{key}.weight", f"must be > 0, got {s.weight}")
            need(Path(s.path).is_dir(), f"{key}.path", f"{s.path}: directory not found; prepare "
                 f"it first: lai-prep --source ... --out {s.path}")
            need((Path(s.path) / "manifest.json").is_file(), f"{key}.path",
                 f"{s.path}: not a prepared data directory (no manifest.json; run lai-prep)")
    need(d.seq_len >= 2, "data.seq_len", f"must be >= 2, got {d.seq_len}")


def _model(cfg: Config) -> None:
    m = cfg.model
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
    need(not m.init_from or (Path(m.init_from) / "config.json").is_file(), "model.init_from",
         f"{m.init_from}: not a save_pretrained folder (no config.json)")


def _train(cfg: Config, world: int) -> None:
    t = cfg.train
    for key in ("steps", "micro_batch", "eval_batches", "max_nonfinite_steps"):
        need(getattr(t, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    for key in ("grad_accum", "global_batch"):
        need(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    resolve_batch(t, world)
    need(0 <= t.zero_stage <= 3, "train.zero_stage", f"must be 0, 1, 2 or 3, got {t.zero_stage}")
    need(t.offload_optimizer == "none" or t.zero_stage >= 1, "train.offload_optimizer",
         "needs train.zero_stage >= 1")
    need(t.offload_params == "none" or t.zero_stage == 3, "train.offload_params",
         "needs train.zero_stage = 3")
    _zero_comm(t)
    if t.backend == "fsdp2":
        _fsdp2(t)
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


# train.<key> -> DeepSpeed's zero_optimization key
ZERO_COMM = {"overlap_comm": "overlap_comm", "contiguous_gradients": "contiguous_gradients",
             "reduce_bucket_size": "reduce_bucket_size",
             "allgather_bucket_size": "allgather_bucket_size",
             "prefetch_bucket_size": "stage3_prefetch_bucket_size"}


def zero_comm(t) -> dict[str, Any]:
    """The ZeRO communication settings `t` (TrainConfig) sets, by their train.* names; the
    unset ones (null, 0) are left to DeepSpeed."""
    return {k: v for k in ZERO_COMM if (v := getattr(t, k)) is not None
            and (isinstance(v, bool) or v != 0)}


def _zero_comm(t) -> None:
    """DeepSpeed's ZeRO communication settings: set only where DeepSpeed reads them."""
    for key in ("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size"):
        need(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0 (0 = DeepSpeed's default), "
             f"got {getattr(t, key)}")
    for key in zero_comm(t):
        need(t.backend == "deepspeed", f"train.{key}", "a DeepSpeed ZeRO setting; fsdp2 "
             "gathers and reduces per block, with no buckets to size (unset it)")
        need(t.zero_stage >= 1, f"train.{key}", "a ZeRO setting; DeepSpeed ignores it at "
             "train.zero_stage=0 (unset it or use stage >= 1)")
    need(not (t.allgather_bucket_size and t.zero_stage == 3), "train.allgather_bucket_size",
         "stages 1-2 only (stage 3 gathers parameters by train.prefetch_bucket_size)")
    need(not (t.prefetch_bucket_size and t.zero_stage != 3), "train.prefetch_bucket_size",
         f"stage 3 only (train.zero_stage={t.zero_stage} gathers by "
         "train.allgather_bucket_size)")


def _fsdp2(t) -> None:
    """The ZeRO settings FSDP2 has a meaning for (pipeline.train.fsdp); the rest refused."""
    need(t.zero_stage in (2, 3), "train.zero_stage", f"{t.zero_stage} has no FSDP2 meaning "
         "(train.backend=fsdp2 always shards parameters, gradients and optimizer states): use 3 "
         "(parameters resharded after forward) or 2 (kept gathered until backward)")
    need(t.offload_optimizer == "none" or t.offload_params == "cpu", "train.offload_optimizer",
         "cpu alone has no FSDP2 meaning (its CPUOffloadPolicy moves parameters, gradients and "
         "the optimizer step together): set train.offload_params=cpu instead")


def _lai(cfg: Config, world: int) -> None:
    """The lai section's rules with the other sections (its own: LAISettings.resolved)."""
    lai = cfg.lai
    try:
        lai.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    need(lai.is_resolved, "lai", "not resolved (pipeline.config.load resolves it)")
    f = FILTERS[lai.filter.kind]
    sharded = cfg.train.zero_stage == 3 or cfg.train.backend == "fsdp2"
    need(not (f.needs_full_params and sharded), "lai.filter.kind",
         f"{lai.filter.kind!r} ({f.about}) needs full parameters; not with train.zero_stage=3 "
         "or train.backend=fsdp2")
    need(not (cfg.model.compile and cfg.train.zero_stage == 3
              and cfg.train.backend == "deepspeed"), "model.compile",
         "not with DeepSpeed's train.zero_stage=3 (its parameter hooks run inside the blocks); "
         "train.backend=fsdp2 gathers each block's parameters around its compiled forward")
    need(not lai.mixing.on or len(cfg.data.sources) >= 2 or lai.mixing.groups,
         "lai.mixing.kind", f"needs at least 2 data.sources to mix, got {len(cfg.data.sources)}")
    if lai.select.kind != "none":
        try:
            pool_size(lai.select.factor, cfg.train.global_batch, world)
        except ValueError as e:
            raise UserError(str(e)) from None


def _log(cfg: Config) -> None:
    log = cfg.log
    need(log.every >= 1, "log.every", f"must be >= 1, got {log.every}")
    need(log.histogram_every >= 0, "log.histogram_every",
         f"must be >= 0, got {log.histogram_every}")
    need(log.peak_tflops >= 0, "log.peak_tflops", f"must be >= 0, got {log.peak_tflops}")
    need(log.ledger_chunk_rows >= 1, "log.ledger_chunk_rows",
         f"must be >= 1, got {log.ledger_chunk_rows}")
    if log.wandb:
        need(bool(log.wandb_project), "log.wandb_project", "must name a W&B project")
        need(importlib.util.find_spec("wandb") is not None, "log.wandb",
             "wandb is not installed (pip install 'lai-pretrain[wandb]', or log.wandb=false)")

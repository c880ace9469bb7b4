"""Setting a run up: its data, its engine (pipeline.train.engine), and the files that describe it.

    data = open_data(cfg, info)                    # train dataset + this rank's loader, val split
    verify_data(cfg, run_dir, info, comm)          # data.verify: shards against their manifests
    parts = build_engine(cfg, info, data, comm)    # model -> engine of train.backend + guarded AdamW
    write_run_files(cfg, run_dir, ds_config(...), data.train.fingerprint)

The DeepSpeed JSON is derived from the config by pipeline.train.engine (`ds_config`, also
imported from here), never written by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.comm import Comm
from pipeline.config import Config, save_yaml
from pipeline.data import PackedDataset, RankLoader
from pipeline.errors import UserError
from pipeline.format.manifest import MANIFEST_NAME, load_manifest
from pipeline.format.tokenizer import tokenizer_sha256
from pipeline.format.verified import verify_shards
from pipeline.fsutil import atomic_write, atomic_write_json
from pipeline.lai.kernels.capture import install_hooks
from pipeline.train import engine as backend
from pipeline.train.hf import init_from
from pipeline.train.engine import ds_config as ds_config  # re-exported: run files, tests
from pipeline.train.flops import model_flops_per_token
from pipeline.train.model import build_model
from pipeline.train.optim import SkipGate, build_optimizer
from pipeline.train.runtime import DistInfo, log0


@dataclass
class Data:
    train: PackedDataset
    loader: RankLoader                 # this rank's slice of every global micro-batch
    val: PackedDataset | None          # for eval and the val reference
    micro_batch: int
    info: DistInfo
    val_sets: dict[str, PackedDataset] = field(default_factory=dict)   # per source (eval)

    def val_batches(self, n: int, dataset: PackedDataset | None = None
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first `n` val micro-batches of this rank from `dataset` (default: the val mix),
        (input_ids, targets) on its device (the same ones every time)."""
        dataset = dataset or self.val
        assert dataset is not None, "no val data"
        loader = RankLoader(dataset, self.micro_batch, self.info.rank, self.info.world)
        dev = self.info.device
        return [(b["input_ids"].to(dev), b["targets"].to(dev))
                for b in (loader.next_batch() for _ in range(n))]


def open_data(cfg: Config, info: DistInfo) -> Data:
    """The datasets (their manifests and shards checked as they open, and the tokenizer that
    RUN/final will carry), this rank's loader."""
    d = cfg.data
    sources = [(s.path, s.weight) for s in d.sources]
    train = PackedDataset(sources, d.seq_len, split="train", seed=cfg.run.seed,
                          mixing=cfg.lai.mixing.on, groups=cfg.lai.mixing.groups)
    _check_tokenizer(train.tokenizer_path, train.tokenizer.sha256, Path(d.sources[0].path))
    loader = RankLoader(train, cfg.train.micro_batch, info.rank, info.world,
                        pin_memory=info.device.type == "cuda", segments=cfg.lai.unit == "document")
    val = None
    if cfg.train.eval_every > 0 or (cfg.lai.enabled and cfg.lai.score.reference == "val"):
        val_sources = [(s.path, s.weight) for s in (d.val_sources or d.sources)]
        try:
            val = PackedDataset(val_sources, d.seq_len, split="val", seed=cfg.run.seed)
        except UserError as e:
            raise UserError(f"train.eval_every / lai.score.reference=val need a val split: {e} (set "
                            "train.eval_every=0, or prepare the data with a val fraction)") from None
    sets = source_val_sets(cfg) if cfg.train.eval_every > 0 and cfg.train.eval_per_source else {}
    return Data(train, loader, val, cfg.train.micro_batch, info, sets)


def source_val_sets(cfg: Config) -> dict[str, PackedDataset]:
    """The val split of each val source (data.val_sources, else data.sources) and of each
    training source that has one large enough for a sample, by source name (val/<source>/loss);
    none when that is one directory, whose loss is val/loss itself."""
    d = cfg.data
    dirs = [s.path for s in d.val_sources or d.sources]
    if d.val_sources:
        dirs += [s.path for s in d.sources if load_manifest(s.path).shards_of("val")]
    dirs = list(dict.fromkeys(str(Path(p).resolve()) for p in dirs))
    if len(dirs) < 2:
        return {}
    sets = {}
    for path in dirs:
        try:
            ds = PackedDataset([(path, 1.0)], d.seq_len, split="val", seed=cfg.run.seed)
        except UserError:              # a training source's val split shorter than a sample
            continue
        name = ds.source_names[0]
        sets[name if name not in sets else f"{name}@{Path(path).name}"] = ds
    return sets if len(sets) >= 2 else {}


def _check_tokenizer(path: Path, sha256: str, data_dir: Path) -> None:
    where = data_dir / MANIFEST_NAME
    if not path.exists():
        raise UserError(f"{path}: missing; {where} names it as the data's tokenizer, which RUN/final "
                        "exports next to the model (restore it, or prepare the data again)")
    if tokenizer_sha256(path) != sha256:
        raise UserError(f"{path}: checksum does not match {where} (the tokenizer changed after "
                        "the data was prepared with it)")


def verify_data(cfg: Config, run_dir: Path, info: DistInfo, comm: Comm) -> None:
    """data.verify over every directory the run reads (pipeline.format.verified); the summary
    line on rank 0."""
    dirs = dict.fromkeys(Path(s.path) for s in (*cfg.data.sources, *cfg.data.val_sources))
    note = verify_shards(dirs, cfg.data.verify, run_dir, comm)
    if note:
        log0(info, note)


@dataclass
class EngineParts:
    engine: Any                        # pipeline.train.engine: DeepSpeed's or FSDPEngine
    optimizer: torch.optim.Optimizer   # the client AdamW, guarded by `gate`
    gate: SkipGate
    n_params: int
    flops_per_token: float


def build_engine(cfg: Config, info: DistInfo, data: Data, comm: Comm, *,
                 load_universal: bool = False) -> EngineParts:
    """The model (seeded by the caller), its guarded optimizer and the engine of
    train.backend (load_universal: DeepSpeed will load a universal checkpoint,
    pipeline.train.checkpointing.universal)."""
    tok = data.train.tokenizer
    if cfg.model.init_from:
        log0(info, init_from.check(cfg.model.init_from, tok, data.train.tokenizer_path,
                                   cfg.data.seq_len, cfg.data.sources[0].path))
    model = build_model(cfg.model, vocab_size=data.train.vocab_size, seq_len=cfg.data.seq_len,
                        bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    if cfg.lai.enabled:         # before the first forward: compiled blocks trace them in
        install_hooks(model, cfg.lai.score.layers)
    flops = model_flops_per_token(model, cfg.data.seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    gate = SkipGate(comm, info.device)
    t = cfg.train
    offload = (t.offload_params if t.backend == "fsdp2" else t.offload_optimizer) != "none"
    engine, optimizer = backend.build(
        cfg, info, model, lambda module: build_optimizer(module, t, gate, offload=offload),
        load_universal=load_universal)
    return EngineParts(engine, optimizer, gate, n_params, flops)


def write_run_files(cfg: Config, run_dir: Path, ds: dict | None, fingerprint: str) -> None:
    """RUN/config.yaml (resolved), RUN/ds_config.json (derived; DeepSpeed only: `ds` None under
    fsdp2), RUN/data.json (for lai-report)."""
    with atomic_write(run_dir / "config.yaml", "w") as f:
        f.write(save_yaml(cfg))
    if ds is not None:
        atomic_write_json(run_dir / "ds_config.json", ds)
    atomic_write_json(run_dir / "data.json", data_json(cfg, fingerprint))


def data_json(cfg: Config, fingerprint: str | None = None) -> dict[str, Any]:
    """RUN/data.json: exactly PackedDataset's arguments, for lai-report to rebuild the dataset
    (plus the train dataset's fingerprint, so re-prepared data is detected; "mixing": true when
    lai.mixing is on, whose seq_ids name (source, sample) directly; "groups": true with
    lai.mixing.groups, whose sources are (source, group) arms)."""
    val = cfg.data.val_sources or cfg.data.sources
    extra: dict[str, Any] = {"fingerprint": fingerprint} if fingerprint else {}
    if cfg.lai.mixing.on:
        extra["mixing"] = True
    if cfg.lai.mixing.groups:
        extra["groups"] = True
    return {**extra, "sources": [[s.path, s.weight] for s in cfg.data.sources],
            "val_sources": [[s.path, s.weight] for s in val],
            "seq_len": cfg.data.seq_len, "seed": cfg.run.seed}


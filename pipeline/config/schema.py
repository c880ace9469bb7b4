"""The run config's schema: one typed dataclass per section (run, data, model, train, lai, log);
the whole config (Config) is assembled and validated in pipeline.config.validate.

The `lai` section is pipeline.lai's own settings type (LAISettings: one block per component,
each beside the class that reads it): it is resolved to concrete values when the config loads
(pipeline.config.load). Choices of the other sections are in CHOICES;
ranges and cross-field rules in pipeline.config.validate.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunConfig:
    out_dir: str = "runs/default"      # RUN directory (config, checkpoints, tb, ledger, final)
    seed: int = 0                      # model init and every RNG of the run
    resume: str = "auto"               # auto (latest complete checkpoint, if any) | never | PATH
    time_limit_s: float = 0.0          # > 0: save and exit 75 once this much wall time has passed
    save_every: int = 100              # checkpoint every N steps (0 = only at the end / on stop)
    keep_checkpoints: int = 3          # complete checkpoints kept (oldest removed)
    continue_from: str = ""            # a complete checkpoint of another run: its model and
                                       # optimizer state start this run; data order, schedule
                                       # and counters start anew (pipeline.train.checkpointing.lineage)


@dataclass
class SourceConfig:
    path: str = ""                     # prepared data directory (output of lai-prep)
    weight: float = 1.0                # mixing weight


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    val_sources: list[SourceConfig] = field(default_factory=list)   # empty = same as sources
    seq_len: int = 128
    verify: str = "first"              # sha256 + token ids of every shard against its manifest:
                                       # first (on a run's first start, and for shards whose files
                                       # changed since; recorded in RUN/data-verified.json) |
                                       # always (every start) | never


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
                                       # head, loss and LAI stay eager; LAI's capture hooks are
                                       # traced into the blocks)
    rope_theta: float = 10000.0        # llama / gpt_neox
    init_from: str = ""                # a save_pretrained folder to start from (continued
                                       # pretraining): its config.json replaces the shape above


@dataclass
class TrainConfig:
    steps: int = 100                   # optimizer steps
    micro_batch: int = 4               # sequences per rank per micro-step (with grad_accum 0:
                                       # at most this many; see pipeline.config.batch)
    grad_accum: int = 0                # micro-steps per optimizer step; 0 = derived from
                                       # global_batch (1 if that is 0 too)
    global_batch: int = 0              # sequences per optimizer step, kept on any number of ranks
                                       # (also on resume); 0 = micro_batch x grad_accum x ranks
    backend: str = "deepspeed"         # deepspeed | fsdp2 (torch's fully_shard per block,
                                       # DCP checkpoints; launched by torchrun; needs
                                       # zero_stage 2 or 3, see pipeline.train.fsdp)
    zero_stage: int = 0
    offload_optimizer: str = "none"    # none | cpu   (ZeRO >= 1)
    offload_params: str = "none"       # none | cpu   (ZeRO 3)
    # DeepSpeed's ZeRO communication (zero_stage >= 1; null / 0 = DeepSpeed's own default;
    # sizes in elements, as DeepSpeed counts them). Change how gradients and parameters travel,
    # not what is computed.
    overlap_comm: bool | None = None   # reduce gradients while the backward runs (DeepSpeed:
                                       # on at stage 3 only); buffers of 4.5x reduce_bucket_size
    contiguous_gradients: bool | None = None   # gather gradients into one buffer as produced
    reduce_bucket_size: int = 0        # gradient elements per reduce (DeepSpeed: 5e8)
    allgather_bucket_size: int = 0     # stages 1-2: updated-parameter elements per all-gather (5e8)
    prefetch_bucket_size: int = 0      # stage 3: parameter elements fetched ahead (5e7)
    precision: str = "fp32"            # fp32 | bf16
    lr: float = 3e-4
    min_lr: float = 3e-5
    schedule: str = "cosine"           # cosine | wsd (warmup-stable-decay) | constant | linear
                                       # (to min_lr at steps); all warm up
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
    eval_per_source: bool = True       # also val/<source>/loss of each source's own val split
                                       # (2+ such sources; one more eval per source)


@dataclass
class LogConfig:
    every: int = 10                    # TensorBoard scalar cadence (steps)
    histogram_every: int = 50          # LAI value histogram cadence (steps)
    peak_tflops: float = 0.0           # per-device peak for MFU (989: H100 bf16); 0 = no MFU
    ledger_chunk_rows: int = 4096
    wandb: bool = False                # also log the scalars to Weights & Biases (pip install
                                       # 'lai-pretrain[wandb]'; WANDB_MODE=offline works)
    wandb_project: str = "lai-pretrain"


CHOICES: dict[str, tuple[str, ...]] = {          # the lai blocks check their own choices
    "data.verify": ("first", "always", "never"),
    "model.family": ("llama", "gpt_neox", "gpt2", "gpt_neo"),
    "train.backend": ("deepspeed", "fsdp2"),
    "train.offload_optimizer": ("none", "cpu"),
    "train.offload_params": ("none", "cpu"),
    "train.precision": ("fp32", "bf16"),
    "train.schedule": ("cosine", "wsd", "constant", "linear"),
}

"""What a run will do, worked out before it starts: the data it reads (tokens per source, what the
run consumes, epochs), one-line warnings when that looks wrong (the run repeats data, the val
split is smaller than one eval), and a memory estimate per device. Printed at the start of every
run (rank 0) and by `lai-train --dry-run`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.data import PackedDataset

GIB = 2**30


@dataclass
class DataPlan:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def data_plan(cfg: Config, train: PackedDataset, val: PackedDataset | None, world: int) -> DataPlan:
    """Tokens available per prepared directory, what the run consumes and the epochs that makes;
    warnings for repeated data and a val split smaller than what one eval (or the LAI val
    reference) reads. `cfg` is validated (the batch triple filled for `world`)."""
    t, plan = cfg.train, DataPlan()
    samples = t.steps * t.global_batch
    total_weight = sum(train.weights)
    for st, w in zip(train.streams, train.weights):
        drawn = samples * w / total_weight
        epochs = drawn / st.num_samples
        names = ", ".join(dict.fromkeys(st.shard_sources))
        plan.lines.append(
            f"data: {st.data_dir} ({names}): {st.num_tokens:,} train tokens in {st.num_docs:,} "
            f"documents = {st.num_samples:,} samples of {train.seq_len}+1; weight "
            f"{w / total_weight:.0%} -> read {epochs:.2f} times")
        if epochs > 1:
            plan.warnings.append(
                f"warning: this run repeats data: {st.data_dir} ({names}) is read {epochs:.2f} "
                f"times ({drawn:,.0f} samples drawn, {st.num_samples:,} in it); fewer "
                "train.steps, more data or a lower weight avoid it")
    plan.lines.append(
        f"this run: {t.steps:,} steps x {t.global_batch} sequences x {train.seq_len} tokens = "
        f"{samples * train.seq_len:,} tokens ({t.global_batch * train.seq_len:,} per step), "
        f"{samples / train.samples_per_epoch:.2f} epochs of the mix")
    if val is not None:
        reads = max(t.eval_batches if t.eval_every else 0,
                    cfg.lai.val_batches if cfg.lai.enabled and cfg.lai.reference == "val" else 0
                    ) * t.micro_batch * world
        plan.lines.append(f"val: {val.samples_per_epoch:,} samples of {val.seq_len}+1 tokens; "
                          f"an eval reads {reads:,}")
        if val.samples_per_epoch < reads:
            plan.warnings.append(
                f"warning: the val split is tiny: {val.samples_per_epoch:,} samples, and each "
                f"eval reads {reads:,} (repeating them), so val loss is noisy; prepare the data "
                "with a larger --val-fraction or set data.val_sources")
    return plan


def memory_estimate(cfg: Config, n_params: int, model_config, world: int) -> str:
    """Per-device memory of the model states (exact sizes for the ZeRO stage and precision) plus
    a rough activation figure, as one line. `model_config`: the HF config (width, depth, vocab)."""
    t = cfg.train
    bf16 = t.precision == "bf16"
    elem = 2 if bf16 else 4
    params = n_params * elem / (world if t.zero_stage == 3 else 1)
    grads = n_params * elem / (world if t.zero_stage >= 2 else 1)
    optim = n_params * (12 if bf16 else 8) / (world if t.zero_stage >= 1 else 1)  # Adam (+ master)
    where = []
    if t.offload_optimizer != "none":
        where.append(f"optimizer {optim / GIB:.2f} GiB in CPU memory")
        optim = 0.0
    if t.offload_params != "none":
        where.append(f"parameters {params / GIB:.2f} GiB in CPU memory")
        params = 0.0
    tokens = t.micro_batch * cfg.data.seq_len
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    per_layer = tokens * hidden * elem * (1 if cfg.model.activation_checkpointing else 17)
    # logits and their gradient in the model's dtype (the loss and the LAI sketch work in
    # chunks); exact LAI also holds the fp32 logit gradients
    exact = cfg.lai.enabled and cfg.lai.method == "exact"
    logits = tokens * model_config.vocab_size * (elem * 2 + (4 if exact else 0))
    act = per_layer * layers + logits
    offloaded = f"; {', '.join(where)}" if where else ""
    return (f"memory per device (estimate): model states {(params + grads + optim) / GIB:.2f} GiB "
            f"(parameters {params / GIB:.2f}, gradients {grads / GIB:.2f}, optimizer "
            f"{optim / GIB:.2f}; ZeRO {t.zero_stage} over {world} rank(s), {t.precision}), "
            f"activations ~{act / GIB:.2f} GiB at micro batch {t.micro_batch} (rough){offloaded}")

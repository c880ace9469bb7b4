"""What a run will do, worked out before it starts: the data it reads (tokens per source, what the
run consumes, epochs), the filter's budget and what its decisions depend on of the split
(pipeline.lai.selection.policy.describe), one-line warnings when that looks wrong (the run repeats data,
the val split is smaller than one eval, the filter cannot exclude anything), printed at the
start of every run (rank 0) and by `lai-train --dry-run`; the dry run adds the LAI reference in
force, a memory estimate per device (model states, activations, logits, LAI's buffers)
and a time estimate (log.peak_tflops).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.config.batch import pool_size
from pipeline.data import PackedDataset
from pipeline.lai.selection.policy import describe as describe_filter

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
    trained = t.steps * t.global_batch
    pool = (pool_size(cfg.lai.select.factor, t.global_batch, world)
            if cfg.lai.select.kind != "none" else t.global_batch)          # lai.select: candidates
    samples = t.steps * pool
    total_weight = sum(train.weights)
    for st, w, arm in zip(train.streams, train.weights, train.source_names):
        drawn = samples * w / total_weight
        epochs = drawn / st.num_samples
        names = arm if train.groups else ", ".join(dict.fromkeys(st.shard_sources))
        docs = st.num_docs if st.members is None else len(st.members)
        plan.lines.append(
            f"data: {st.data_dir} ({names}): {st.num_tokens:,} train tokens in {docs:,} "
            f"documents = {st.num_samples:,} samples of {train.seq_len}+1; weight "
            f"{w / total_weight:.0%} -> read {epochs:.2f} times")
        if epochs > 1:
            plan.warnings.append(
                f"warning: this run repeats data: {st.data_dir} ({names}) is read {epochs:.2f} "
                f"times ({drawn:,.0f} samples drawn, {st.num_samples:,} in it); fewer "
                "train.steps, more data or a lower weight avoid it")
    plan.lines.append(
        f"this run: {t.steps:,} steps x {t.global_batch} sequences x {train.seq_len} tokens = "
        f"{trained * train.seq_len:,} tokens ({t.global_batch * train.seq_len:,} per step), "
        f"{samples / train.samples_per_epoch:.2f} epochs of the mix"
        f"{f' (lai.select draws {pool} candidates per step)' if pool != t.global_batch else ''}")
    if val is not None:
        reads = max(t.eval_batches if t.eval_every else 0,
                    cfg.lai.score.val_batches if cfg.lai.enabled and cfg.lai.score.reference == "val" else 0
                    ) * t.micro_batch * world
        plan.lines.append(f"val: {val.samples_per_epoch:,} samples of {val.seq_len}+1 tokens; "
                          f"an eval reads {reads:,}")
        if val.samples_per_epoch < reads:
            plan.warnings.append(
                f"warning: the val split is tiny: {val.samples_per_epoch:,} samples, and each "
                f"eval reads {reads:,} (repeating them), so val loss is noisy; prepare the data "
                "with a larger --val-fraction or set data.val_sources")
    for line in describe_filter(cfg.lai, t.global_batch, t.micro_batch, t.grad_accum, world,
                                t.steps):
        (plan.warnings if line.startswith("warning:") else plan.lines).append(line)
    return plan


def reference_note(cfg: Config) -> str:
    """The LAI reference in force, in words (the start line and the dry run name it)."""
    ref = cfg.lai.score.reference
    what = {"val": "the val split of " + ("data.val_sources" if cfg.data.val_sources
                                          else "data.sources"),
            "global": "the global micro-batch itself: self-influence",
            "local": "each rank's own micro-batch: self-influence"}[ref]
    return f"lai reference: {ref} ({what})"


def memory_estimate(cfg: Config, n_params: int, model_config, world: int) -> str:
    """Per-device memory of the model states (exact sizes for the ZeRO stage and precision), a
    rough activation figure, the logits and LAI's buffers (lai_buffers), as one line.
    `model_config`: the HF config (width, depth, vocab)."""
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
    act = tokens * hidden * elem * (1 if cfg.model.activation_checkpointing else 17) * layers
    # logits and their gradient in the model's dtype (the loss and the LAI sketch work in
    # chunks); exact LAI also holds the fp32 logit gradients
    exact = cfg.lai.enabled and cfg.lai.score.method == "exact"
    logits = tokens * model_config.vocab_size * (elem * 2 + (4 if exact else 0))
    lai, lai_parts = lai_buffers(cfg, model_config, world)
    total = params + grads + optim + act + logits + lai
    offloaded = f"; {', '.join(where)}" if where else ""
    return (f"memory per device (estimate): ~{total / GIB:.2f} GiB = model states "
            f"{(params + grads + optim) / GIB:.2f} GiB (parameters {params / GIB:.2f}, gradients "
            f"{grads / GIB:.2f}, optimizer {optim / GIB:.2f}; ZeRO {t.zero_stage} over {world} "
            f"rank(s), {t.precision}) + activations ~{act / GIB:.2f} GiB at micro batch "
            f"{t.micro_batch} (rough) + logits {logits / GIB:.2f} GiB (logits and their gradient"
            f"{', fp32 gradients for exact LAI' if exact else ''}) + LAI buffers {lai / GIB:.2f} GiB ({lai_parts}){offloaded}")


def lai_buffers(cfg: Config, model_config, world: int) -> tuple[float, str]:
    """Bytes LAI holds per device on top of training at its peak, and what they are: the
    captured layer inputs kept for scoring (only with activation checkpointing: otherwise
    autograd holds them anyway), one fp32 softmax block of the vocabulary side
    (pipeline.lai.kernels.sketch.CHUNK_ELEMENTS, the GPU size), and the sketches (method=sketch)
    or the all-gathered features (method=exact)."""
    from pipeline.lai.kernels.sketch import CHUNK_ELEMENTS
    lai, t, seq = cfg.lai.score, cfg.train, cfg.data.seq_len
    if not cfg.lai.enabled:
        return 0.0, "LAI off"
    d, n_layer, vocab = (model_config.hidden_size, model_config.num_hidden_layers,
                         model_config.vocab_size)
    inter = getattr(model_config, "intermediate_size", None) or 4 * d
    width = {"linear": n_layer * (3 * d + inter) + d, "blocks": (n_layer + 1) * d,
             "head": d}[lai.layers]                     # summed widths of the captured inputs
    tokens, local, glob = t.micro_batch * seq, t.micro_batch, t.micro_batch * world
    parts = {}
    if cfg.model.activation_checkpointing:
        parts["layer inputs"] = tokens * width * (2 if t.precision == "bf16" else 4)
    parts["softmax block"] = min(tokens * vocab, CHUNK_ELEMENTS["cuda"]) * 4
    if lai.method == "sketch":
        assert lai.sketch_dim is not None                   # load_config resolved it
        per_seq = local + 1 if lai.pairing == "token_pair" else glob + local
        parts["sketches"] = per_seq * lai.sketch_dim * 4
    else:
        parts["gathered features"] = glob * (1 if lai.pairing == "pooled" else seq) * (
            width + vocab) * 4
    return sum(parts.values()), ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items())


MFU_ASSUMED = (0.40, 0.16)      # a tuned large model; this pipeline, GPT-2 small, H200, LAI on


def time_estimate(cfg: Config, flops_per_token: float, world: int) -> str:
    """Step and run time from the model FLOPs (pipeline.train.flops) and log.peak_tflops, at an
    assumed MFU of 0.40 and at the 0.16 this pipeline measured with LAI on GPT-2 small on one
    H200 (docs/RESULTS.md, GPU check)."""
    peak = cfg.log.peak_tflops
    if peak <= 0:
        return ("time (estimate): none; set log.peak_tflops (per-device peak TFLOP/s, e.g. 989 "
                "for an H100 in bf16) for one")
    step_flops = flops_per_token * cfg.train.global_batch * cfg.data.seq_len
    secs = [step_flops / (peak * 1e12 * world * u) for u in MFU_ASSUMED]
    hours = [s * cfg.train.steps / 3600 for s in secs]
    return (f"time (estimate): {secs[0]:.2f}-{secs[1]:.2f} s per step, {hours[0]:,.1f}-"
            f"{hours[1]:,.1f} h for {cfg.train.steps:,} steps on {world} device(s) at "
            f"{peak:g} TFLOP/s peak each (MFU {MFU_ASSUMED[0]:.2f}-{MFU_ASSUMED[1]:.2f}; "
            f"{flops_per_token / 1e9:.2f} GFLOP per token; LAI's sketch adds ~7% at GPT-2-small "
            "scale)")

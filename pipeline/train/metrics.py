"""TensorBoard logging of a (multi-rank) training run: one TensorBoard run per training run.

    RUN/tb/events.out.tfevents.*        every scalar and histogram, written by rank 0 only

Global values (losses, LAI fractions, throughput of all ranks) are reduced by the caller and
handed to `scalars`/`histogram` on every rank; only rank 0 writes them, the others no-op, so the
calls need no rank checks. Per-rank values (each rank's tokens/s, step-time breakdown, memory)
are gathered by the caller and written as their spread over the ranks (`rank_spread`:
`perf_ranks/<name>_min`, `_max`, and `perf_ranks/slowest_rank`), so a straggler stands out
without one TensorBoard run per rank (64 GPUs would make 65 runs). Rank 0 also hands every
global scalar to its sinks (pipeline.train.sinks: RUN/metrics.jsonl, W&B).

Tag groups (one TensorBoard section each): `train/` (loss, lr, grad_norm, skipped steps),
`val/` (loss, ppl; `val/<source>/loss` per source from `val_scalars`), `perf/` (tokens_per_s,
tflops, mfu), `perf_ranks/`, `lai/` (excluded_frac, kept_tokens, value histogram),
`lai_source/<source>/` (excluded_frac, mean_value_norm, sequences) from `source_scalars`, and
with lai.mixing `lai_mixing/<source>/` (weight, weight_now, weight_avg, reward, value, loss,
sequences) from `mixing_scalars`.

Every LAI tag carries a one-line description (what it measures and which sign is good: the
DESCRIPTIONS table), written with its first event, which TensorBoard shows next to the chart.

Resuming: pass `purge_step=<first step of the resumed run>`; TensorBoard then hides the events
the interrupted run wrote at steps >= purge_step, so a resumed run's curves equal the
uninterrupted run's.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram as histogram_summary

# What each LAI chart means (the source name in lai_source/<source>/... is matched as "*").
DESCRIPTIONS = {
    "lai/excluded_frac": "Fraction of the step's sequences excluded before the optimizer step "
                         "(filter score <= lai.filter.threshold: by default the value's z-score in "
                         "its global micro-batch <= -1; at most lai.filter.max_exclude_frac; 0 while "
                         "lai.warmup_steps lasts).",
    "lai/kept_tokens": "Target tokens trained on per step after exclusion, all ranks.",
    "lai/values": "LAI value of every sequence of the step: > 0 a step on it lowers the loss of "
                  "the reference (the rest of the global batch, or the val set); < 0 it "
                  "raises it. The filter compares lai.filter.normalize's step-normalised value "
                  "with lai.filter.threshold.",
    "lai_source/*/excluded_frac": "Fraction of this source's sequences of the step excluded "
                                  "before the optimizer step.",
    "lai_source/*/mean_value_norm": "Mean step-normalised LAI value (z-score within the global "
                                    "micro-batch) of this source's sequences: comparable across "
                                    "steps; < 0 worse than the step's average.",
    "lai_source/*/sequences": "This source's sequences in the step, all ranks.",
    "val/*/loss": "Validation loss (token mean) on this source's own val split: how the model "
                  "does on each source, whatever the mix; lower is better.",
    "lai_mixing/*/weight": "This source's sampling weight (lai.mixing): the share of the next "
                           "batches drawn from it (the time-average with lai.mixing.average).",
    "lai_mixing/*/weight_now": "The mixer's latest weight for this source (lai.mixing), before "
                               "time-averaging.",
    "lai_mixing/*/weight_avg": "The time-average of this source's weight over the mixing "
                               "updates (what is drawn with lai.mixing.average=true).",
    "lai_mixing/*/reward": "The smoothed reward that drives this source's weight (lai.mixing): "
                           "mixer=value its running mean z-scored LAI value (> 0 it gains "
                           "weight); mixer=loss_bandit its running loss / sampling weight.",
    "lai_mixing/*/value": "Mean z-scored LAI value of this source's sequences since the "
                          "previous mixing update.",
    "lai_mixing/*/loss": "Mean training loss of this source's sequences since the previous "
                         "mixing update.",
    "lai_mixing/*/sequences": "Sequences drawn from this source so far, all ranks.",
}


def description(tag: str) -> str | None:
    """The DESCRIPTIONS entry of `tag`, if it has one."""
    parts = tag.split("/")
    if len(parts) == 3 and parts[0] in ("lai_source", "lai_mixing", "val"):
        tag = f"{parts[0]}/*/{parts[2]}"
    return DESCRIPTIONS.get(tag)


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


class Metrics:
    """TensorBoard writer (and sinks) for global scalars and histograms; rank 0 writes."""

    def __init__(self, log_dir: str | Path, rank: int, world: int, *, flush_secs: int = 30,
                 purge_step: int | None = None, sinks: Sequence = ()):
        if not 0 <= rank < world:
            raise ValueError(f"Metrics: rank {rank} not in [0, {world})")
        self.log_dir, self.rank, self.world = Path(log_dir), rank, world
        self._flush_secs, self._purge_step = flush_secs, purge_step
        self._global = self._writer(self.log_dir) if rank == 0 else None
        self._sinks = list(sinks) if rank == 0 else []
        self._described: set[str] = set()                # tags whose description is written

    def _writer(self, path: Path) -> SummaryWriter:
        return SummaryWriter(str(path), flush_secs=self._flush_secs, purge_step=self._purge_step)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Global scalars `{tag: value}` (floats, 0-d tensors); written by rank 0 only."""
        if self._global is not None:
            for tag, v in values.items():
                if self._describe(tag):
                    self._add(Summary(value=[Summary.Value(tag=tag, simple_value=float(v))]),
                              tag, step, "scalars")
                else:
                    self._global.add_scalar(tag, float(v), global_step=step)
        for sink in self._sinks:
            sink.scalars(step, values)

    def _describe(self, tag: str) -> bool:
        """True the first time a tag with a description is written."""
        return tag not in self._described and description(tag) is not None

    def _add(self, summary: Summary, tag: str, step: int, plugin: str) -> None:
        """Write `summary` (one value, `tag`) with the tag's description as its metadata."""
        summary.value[0].metadata.CopyFrom(SummaryMetadata(
            summary_description=description(tag),
            plugin_data=SummaryMetadata.PluginData(plugin_name=plugin)))
        assert self._global is not None                # rank 0 writes (the callers check)
        self._global._get_file_writer().add_summary(summary, step)
        self._described.add(tag)

    def histogram(self, step: int, tag: str, values) -> None:
        """Distribution of `values` (1-D array/tensor, any device) at `step`; rank 0 only.
        Non-finite values are dropped (TensorBoard cannot bin them); nothing is written if none
        are left."""
        if self._global is None:
            return
        v = _numpy(values)
        v = v[np.isfinite(v)]
        if not v.size:
            return
        if self._describe(tag):
            self._add(histogram_summary(tag, v, self._global.default_bins), tag, step,
                      "histograms")
        else:
            self._global.add_histogram(tag, v, global_step=step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """A text note (e.g. the resolved config) on rank 0, shown in TensorBoard's Text tab."""
        if self._global is not None:
            self._global.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        """Write pending events now (also happens every `flush_secs` and on close)."""
        for w in (self._global, *self._sinks):
            if w is not None:
                w.flush()

    def close(self) -> None:
        for w in (self._global, *self._sinks):
            if w is not None:
                w.close()
        self._global, self._sinks = None, []

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tag_name(name: str) -> str:
    """A source name made safe for a tag component (TensorBoard splits sections on '/')."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "_"


def source_scalars(sources: Sequence[str], values, kept) -> dict[str, float]:
    """Per-source LAI scalars of one step, from each sequence's source name, normalised value
    (its z-score within its global micro-batch, so steps compare) and keep flag (equal lengths):
    `lai_source/<source>/excluded_frac`, `.../mean_value_norm` (mean over all the source's
    sequences, kept or not) and `.../sequences`. Sources absent from the step are absent
    from the result (TensorBoard then draws no point rather than a fake zero)."""
    v = _numpy(values)
    k = _numpy(kept).astype(bool)
    if not len(sources) == v.size == k.size:
        raise ValueError(f"source_scalars: lengths differ: sources {len(sources)}, "
                         f"values {v.size}, kept {k.size}")
    names, inverse = np.unique(np.asarray(sources, dtype=object).astype(str), return_inverse=True)
    count = np.bincount(inverse, minlength=len(names))
    excluded = np.bincount(inverse, weights=~k, minlength=len(names))
    total = np.bincount(inverse, weights=v, minlength=len(names))
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        prefix = f"lai_source/{_tag_name(name)}/"
        out[prefix + "excluded_frac"] = float(excluded[i] / count[i])
        out[prefix + "mean_value_norm"] = float(total[i] / count[i])
        out[prefix + "sequences"] = float(count[i])
    return out


def val_scalars(loss: float, per_source: Mapping[str, float]) -> dict[str, float]:
    """One eval: `val/loss` and `val/ppl` of the val mix, `val/<source>/loss` of each source's
    own val split."""
    out = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
    out.update({f"val/{_tag_name(name)}/loss": v for name, v in per_source.items()})
    return out


def mixing_scalars(names: Sequence[str], arms: Mapping[str, Sequence[float]]
                   ) -> dict[str, float]:
    """The mixture now (lai.mixing): `lai_mixing/<source>/<stat>` for each of SourceMixer.arms()
    (weight, weight_now, weight_avg, reward, value, loss, sequences), per weighted source; a stat
    not measured yet (NaN) is left out."""
    out: dict[str, float] = {}
    for stat, per_source in arms.items():
        for name, v in zip(names, _numpy(per_source)):
            if math.isfinite(v):
                out[f"lai_mixing/{_tag_name(name)}/{stat}"] = float(v)
    return out


def rank_spread(per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-rank scalars (one `{perf/<name>: value}` per rank, in rank order) as their spread:
    `perf_ranks/<name>_min` and `_max`, and `perf_ranks/slowest_rank`, the rank with the lowest
    `perf/tokens_per_s_rank` (if given)."""
    out: dict[str, float] = {}
    for tag in per_rank[0]:
        v = [float(r[tag]) for r in per_rank]
        name = "perf_ranks/" + tag.split("/", 1)[-1]
        out[name + "_min"], out[name + "_max"] = min(v), max(v)
    if "perf/tokens_per_s_rank" in per_rank[0]:
        tps = [float(r["perf/tokens_per_s_rank"]) for r in per_rank]
        out["perf_ranks/slowest_rank"] = float(tps.index(min(tps)))
    return out

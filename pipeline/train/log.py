"""What a run reports while it trains: TensorBoard scalars every log.every steps (averaged over
the window since the last report), the LAI value histogram every log.histogram_every steps and at
the last step, and one console line per report (which says when LAI is still warming up).
Collective: every rank calls `after_step` for every step."""
from __future__ import annotations

import time

import torch

from pipeline.comm import Comm
from pipeline.config import Config
from pipeline.train.flops import achieved_tflops, mfu
from pipeline.train.metrics import Metrics, mixing_scalars, rank_spread, source_scalars
from pipeline.train.runtime import DistInfo, log0, peak_memory_gib
from pipeline.train.checkpointing.state import Counters
from pipeline.train.step import StepResult


class Window:
    """What happened since the last report (rank-local until `scalars`)."""

    def __init__(self):
        self.clocks = []                  # each micro-step's PhaseClock, read at the report
        self.rank_tokens = 0
        self.steps = self.skipped = 0
        self.loss = self.kept_loss = self.kept_tokens = self.excluded = self.sequences = 0.0
        self.grad_norm = self.lr = float("nan")
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def seconds_by_part(self) -> list[float]:
        """Summed seconds of data, forward, LAI, backward + step (waits for the device once)."""
        return [sum(p) for p in zip(*(c.durations() for c in self.clocks))] or [0.0] * 4

    def add(self, r: StepResult) -> None:
        stats = [m.stats for m in r.micros]
        if r.pool_clock is not None:                 # lai.select's candidate pool
            self.clocks.append(r.pool_clock)
        for m in r.micros:
            self.clocks.append(m.clock)
            self.rank_tokens += m.rank_tokens
            self.rows.append((m.seq_ids.cpu(), m.value_norm.cpu(), m.keep.cpu()))
        self.steps += 1
        if r.skipped:                # its loss did not train anything (and may be inf or NaN)
            self.skipped += 1
        else:
            self.loss += sum(s.loss for s in stats) / len(stats)
            self.kept_loss += sum(s.kept_loss for s in stats) / len(stats)
        self.kept_tokens += sum(s.kept_tokens for s in stats)
        self.excluded += sum(s.seqs - s.kept_seqs for s in stats)
        self.sequences += sum(s.seqs for s in stats)
        self.grad_norm, self.lr = r.grad_norm, r.lr

    def scalars(self) -> dict[str, float]:
        """Means over the window; the losses over its applied steps (NaN if all were skipped)."""
        n = max(self.steps, 1)
        applied = self.steps - self.skipped
        loss, kept = (x / applied if applied else float("nan") for x in (self.loss, self.kept_loss))
        return {"train/loss": loss, "train/loss_kept": kept,
                "train/lr": self.lr, "train/grad_norm": self.grad_norm,
                "lai/excluded_frac": self.excluded / max(self.sequences, 1.0),
                "lai/kept_tokens": self.kept_tokens / n}

    def rank_scalars(self, parts: list[float]) -> dict[str, float]:
        n = max(self.steps, 1)
        names = ("perf/time_data_s", "perf/time_forward_s", "perf/time_lai_s",
                 "perf/time_backward_step_s")
        return {k: v / n for k, v in zip(names, parts)}

    def source_rows(self, dataset) -> tuple[list[str], list[float], list[bool]]:
        srcs, vals, kept = [], [], []
        for seq_ids, values, keep in self.rows:
            srcs += [dataset.locate(int(i))[0].source for i in seq_ids]
            vals += values.tolist()
            kept += keep.tolist()
        return srcs, vals, kept


class StepLog:
    """Reports of one run (see the module doc)."""

    def __init__(self, cfg: Config, info: DistInfo, comm: Comm, metrics: Metrics, dataset,
                 flops_per_token: float, mixer=None):
        self.cfg, self.info, self.comm, self.metrics = cfg, info, comm, metrics
        self.dataset, self.flops_per_token, self.mixer = dataset, flops_per_token, mixer
        self.window = Window()
        self.started = time.time()                          # for elapsed time and ETA
        self.first_step: int | None = None

    def after_step(self, r: StepResult, counters: Counters, *, last: bool = False) -> None:
        """`last`: the run ends after this step (a report is due whatever the cadence)."""
        self.window.add(r)
        if self.first_step is None:
            self.first_step = r.step
        log, last = self.cfg.log, last or r.step == self.cfg.train.steps
        if r.step % log.every == 0 or last:
            self._report(r, counters)
            self.window = Window()
        if log.histogram_every and (r.step % log.histogram_every == 0 or last) \
                and self.cfg.lai.enabled:
            values = torch.cat([m.values for m in r.micros])    # per unit: counts differ
            self.metrics.histogram(r.step, "lai/values", torch.cat(self.comm.gather(values)))

    def _report(self, r: StepResult, counters: Counters) -> None:
        w, info = self.window, self.info
        phases = w.seconds_by_part
        rank_tps = w.rank_tokens / max(sum(phases), 1e-9)
        all_tps = float(self.comm.all_reduce(torch.tensor([rank_tps], dtype=torch.float64,
                                                          device=info.device)).item())
        scalars = w.scalars()
        scalars.update({"train/skipped_steps": counters.skipped_steps,
                        "train/tokens": counters.tokens, "perf/tokens_per_s": all_tps,
                        "perf/tflops_per_device":
                            achieved_tflops(all_tps, self.flops_per_token) / info.world})
        if self.cfg.log.peak_tflops > 0:
            scalars["perf/mfu"] = mfu(all_tps, self.flops_per_token, self.cfg.log.peak_tflops,
                                      info.world)
        parts = self.comm.gather_objects(w.source_rows(self.dataset))
        srcs, vals, kept = ([x for p in parts for x in p[i]] for i in range(3))
        if srcs:
            scalars.update(source_scalars(srcs, vals, kept))
        if self.mixer is not None:
            scalars.update(mixing_scalars(self.dataset.source_names, self.mixer.arms()))
        mine = {**w.rank_scalars(phases), "perf/tokens_per_s_rank": rank_tps,
                "perf/peak_memory_gib": peak_memory_gib(info.device)}
        scalars.update(rank_spread(self.comm.gather_objects(mine)))
        self.metrics.scalars(r.step, scalars)
        lai = self.cfg.lai
        warming = (f" (LAI warming up: filtering starts at step {lai.warmup_steps + 1})"
                   if lai.filter.kind != "none" and r.step <= lai.warmup_steps else "")
        mix = "" if self.mixer is None else " mix " + ", ".join(
            f"{n} {w:.1%}" for n, w in zip(self.dataset.source_names, self.mixer.weights))
        log0(info, f"step {r.step}/{self.cfg.train.steps} loss {scalars['train/loss']:.4f} "
                   f"excluded {scalars['lai/excluded_frac']:.2%}{warming} lr {r.lr:.2e} "
                   f"grad_norm {r.grad_norm:.3f} {all_tps:,.0f} tok/s{mix} {self._timing(r.step)}")

    def _timing(self, step: int) -> str:
        """'elapsed H:MM:SS ETA H:MM:SS': since this process started training, and the steps left
        at this process's mean pace."""
        elapsed = time.time() - self.started
        assert self.first_step is not None                  # after_step set it
        left = (self.cfg.train.steps - step) * elapsed / (step - self.first_step + 1)
        return f"elapsed {_hms(elapsed)} ETA {_hms(left)}"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

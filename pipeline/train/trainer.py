"""The Trainer: one run, read top to bottom.

    Trainer(cfg, info, resume).run()

setup (__init__): data -> run files -> model, optimizer, DeepSpeed engine -> LAI selector,
source mixer (lai.mixing), ledger, counters -> one TrainState that checkpoints save
and restore -> metrics;
then `run()`: a loop of `train_step` (pipeline.train.step: the micro-steps and the update) and
log / eval / save / stop, each a short method; at the end the final export.
Exit codes: 0 finished (RUN/final written), 75 stopped by SIGTERM/SIGUSR1 or run.time_limit_s
after saving a checkpoint (re-run the same command to resume).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pipeline.comm import Comm
from pipeline.config import Config, save_yaml
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_json
from pipeline.lai.kernels.grads import per_sequence_loss
from pipeline.lai.selection.mixing import SourceMixer
from pipeline.lai.selection.selector import Selector
from pipeline.train import faults
from pipeline.train.checkpointing import checkpoint, lineage
from pipeline.train.engine import ds_config
from pipeline.train.hf.export import export_final
from pipeline.train.fsdp import describe
from pipeline.format.ledger import Ledger
from pipeline.train.checkpointing.lock import lock_run
from pipeline.train.log import StepLog
from pipeline.train.metrics import Metrics, val_scalars
from pipeline.train.pool import CandidatePool
from pipeline.train.moments import MomentReader
from pipeline.train.checkpointing.resume import Resume, config_hash
from pipeline.train.runplan import data_plan
from pipeline.train.runtime import DistInfo, StopFlag, log0, log_to, seed_everything, shutdown
from pipeline.train.setup import build_engine, open_data, verify_data, write_run_files
from pipeline.train.sinks import open_sinks
from pipeline.train.checkpointing.state import Counters, RNGState, TrainState
from pipeline.train.step import StepResult, StepRunner

EXIT_STOPPED = 75


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo, resume: Resume | None,
                 origin: lineage.Origin | None = None):
        self.t_start = time.time()
        self.cfg, self.info, self.resume, self.origin = cfg, info, resume, origin
        self.comm = Comm.resolve()
        self.stop, self.out_of_time = StopFlag(), False
        self.run_dir = Path(cfg.run.out_dir)
        self.lock = lock_run(self.run_dir, info.main, self.comm)
        if info.device.type == "cuda":    # perf/peak_memory_gib is this run's, also in a
            torch.cuda.reset_peak_memory_stats(info.device)   # long-lived process
        seed_everything(cfg.run.seed)
        self.data = open_data(cfg, info)
        if info.main:
            log_to(self.run_dir / "train.log")
        verify_data(cfg, self.run_dir, info, self.comm)
        start = resume or origin
        self.parts = build_engine(cfg, info, self.data, self.comm,
                                  load_universal=start is not None and start.universal)
        self.selector = Selector(cfg.lai, cfg.run.seed, self.comm,
                                 val_batches=lambda: self.data.val_batches(cfg.lai.score.val_batches),
                                 documents=self.data.train,
                                 moments=MomentReader(self.parts.engine, self.parts.optimizer,
                                                      self.comm, info.device),
                                 global_batch=cfg.train.global_batch)
        self.mixer = (SourceMixer(self.data.train.weights, cfg.lai.mixing, cfg.lai.warmup_steps,
                                  self.comm) if cfg.lai.mixing.on else None)
        self.ledger = Ledger(self.run_dir, info.rank, chunk_rows=cfg.log.ledger_chunk_rows)
        self.counters = Counters()
        self.state = self._register()
        self._restore()
        purge = self.counters.step + 1
        if info.main:                     # after the last refusal: none leaves run files behind
            ds = ds_config(cfg, info.world, info.device.type == "cuda") \
                if cfg.train.backend == "deepspeed" else None
            write_run_files(cfg, self.run_dir, ds, self.data.train.fingerprint)
        self.metrics = Metrics(self.run_dir / "tb", info.rank, info.world, purge_step=purge,
                               sinks=open_sinks(self.run_dir, info.main, purge,
                                                cfg.log.wandb_project if cfg.log.wandb else None,
                                                cfg.to_dict()))
        t = cfg.train
        self.runner = StepRunner(self.parts.engine, self.parts.optimizer, self.parts.gate,
                                 self.selector, self.data.loader, self.comm, info.device, t,
                                 own_grad_norm=t.backend == "deepspeed" and t.zero_stage == 0
                                 and t.precision == "fp32",
                                 pool=CandidatePool(self.selector, self.data.loader, self.comm,
                                                    info.device, t.micro_batch, t.global_batch)
                                 if cfg.lai.select.kind != "none" else None)
        self.log = StepLog(cfg, info, self.comm, self.metrics, self.data.train,
                           self.parts.flops_per_token, self.mixer)
        self._announce()

    def _register(self) -> TrainState:
        """Every component that holds state, in the one TrainState checkpoints handle."""
        state = TrainState(self.parts.engine, self.info.rank)
        state.register("counters", self.counters)
        state.register("loader", self.data.loader)
        state.register("lai", self.selector, per_rank=True, elastic="fresh")
        if self.selector.memory is not None:      # identical on every rank: saved once
            state.register("lai_memory", self.selector.memory, optional=True)
        state.register("ledger", self.ledger, per_rank=True, elastic="rank0")
        state.register("rng", RNGState(), per_rank=True, elastic="fresh")
        if self.mixer is not None:
            state.register("mixing", self.mixer, optional=True)
        return state

    def _restore(self) -> None:
        if self.resume is None:
            self.ledger.load_state_dict({"next_step": 1})   # rows of an unsaved earlier attempt
            if self.origin is not None:                     # run.continue_from: engine only
                checkpoint.load_engine(self.parts.engine, self.origin.path,
                                       universal=self.origin.universal)
                if self.info.main:
                    lineage.write(self.run_dir, self.origin)
                log0(self.info, self.origin.note())
            return
        r = self.resume
        checkpoint.load(self.state, r.path, same_world=r.same_world, universal=r.universal)
        if not r.same_world and self.info.main:
            self.ledger.drop_orphans(self.info.world)
        log0(self.info, r.note())

    def _announce(self) -> None:
        cfg, info, t = self.cfg, self.info, self.cfg.train
        engine = describe(t) if t.backend == "fsdp2" else f"ZeRO {t.zero_stage}"
        if self.counters.step == 0:
            self.metrics.text("config", "```\n" + save_yaml(cfg) + "\n```")
        log0(info, f"{self.parts.n_params / 1e6:.2f}M params, {info.world} rank(s) on "
                   f"{info.device.type}, {engine}, {t.precision}, global batch "
                   f"{t.global_batch} = {t.micro_batch}x{t.grad_accum}x{info.world}, LAI "
                   f"{'on (reference ' + cfg.lai.score.reference + ')' if cfg.lai.enabled else 'off'}"
                   f", filter {cfg.lai.filter.kind}{_acting(cfg.lai)}"
                   f"{f', source mixing ({cfg.lai.mixing.kind})' if self.mixer else ''}; "
                   f"run dir {self.run_dir} (log: train.log)")
        plan = data_plan(cfg, self.data.train, self.data.val, info.world)
        for line in plan.lines + plan.warnings:
            log0(info, line)

    # ------------------------------------------------------------ the loop
    def run(self) -> int:
        """Train to train.steps (0) or until stopped (EXIT_STOPPED, after a checkpoint)."""
        steps = self.cfg.train.steps
        while self.counters.step < steps:
            result = self.train_step()
            unstable = self.counters.bad_in_a_row >= self.cfg.train.max_nonfinite_steps
            self.log.after_step(result, self.counters, last=unstable)
            faults.crash_if_due(result.step, self.info.rank, resumed=self.resume is not None)
            if unstable:
                self.abort_unstable()
            self.evaluate_if_due(result.step)
            stopping = self.stop_requested()
            if self.save_due(result.step) or stopping:
                self.save()
            if stopping and result.step < steps:
                return self.stopped()
        return self.finish()

    def train_step(self) -> StepResult:
        """One optimizer step, recorded in the ledger and counted (skipped ones too)."""
        result = self.runner.step(self.counters.step + 1)
        for m in result.micros:
            self.ledger.append(result.step, m.seq_ids, m.values, m.keep, m.losses, m.value_norm,
                               m.weight, m.segments)
        if result.rejected is not None:               # lai.select: candidates not trained
            r = result.rejected
            none = torch.zeros(r["seq_ids"].numel(), dtype=torch.bool)
            self.ledger.append(result.step, r["seq_ids"], r["values"], none, r["losses"],
                               r["value_norm"], none)
        self.mix(result)
        c = self.counters
        c.step, c.tokens = result.step, c.tokens + result.tokens
        if not result.skipped:
            c.bad_in_a_row = 0
            return result
        c.skipped_steps += 1
        c.bad_in_a_row += 1
        log0(self.info, f"step {c.step}: non-finite loss or gradient norm, update skipped "
                        f"({c.bad_in_a_row} in a row)")
        return result

    def abort_unstable(self) -> None:
        """train.max_nonfinite_steps skipped steps in a row: stop (the step is logged)."""
        c = self.counters
        self.metrics.flush()
        raise UserError(f"train.max_nonfinite_steps: {c.bad_in_a_row} steps in a row had a "
                        f"non-finite loss or gradient norm (last at step {c.step}); lower "
                        "train.lr, raise train.warmup_steps, or check the data")

    def mix(self, result: StepResult) -> None:
        """lai.mixing: the step's normalised values and losses update the source weights (when
        due), and the loader draws the next global micro-batches with them."""
        if self.mixer is None:
            return
        for m in result.micros:
            sources = torch.from_numpy(self.data.train.source_of(m.seq_ids.numpy()))
            self.mixer.observe(result.step, sources, m.value_norm, m.losses)
        weights = self.mixer.end_step(result.step)
        if weights is not None:
            self.data.loader.set_weights(weights)

    def evaluate_if_due(self, step: int) -> None:
        t = self.cfg.train
        if not (t.eval_every and (step % t.eval_every == 0 or step == t.steps)):
            return
        val_loss = evaluate(self.parts.engine, self.data.val_batches(t.eval_batches), self.comm)
        per_source = {name: evaluate(self.parts.engine, self.data.val_batches(t.eval_batches, ds),
                                     self.comm) for name, ds in self.data.val_sets.items()}
        scalars = val_scalars(val_loss, per_source)
        self.metrics.scalars(step, scalars)
        by_source = ", ".join(f"{n} {v:.4f}" for n, v in per_source.items())
        log0(self.info, f"step {step}: val loss {val_loss:.4f} ppl {scalars['val/ppl']:.2f}"
                        f"{f' (per source: {by_source})' if by_source else ''}")

    def stop_requested(self) -> bool:
        """A signal or the time limit, on any rank (the same answer on every rank)."""
        limit = self.cfg.run.time_limit_s
        self.out_of_time = limit > 0 and time.time() - self.t_start >= limit
        return self.comm.any(self.stop.signal is not None or self.out_of_time, self.info.device)

    def save_due(self, step: int) -> bool:
        every = self.cfg.run.save_every
        return bool(every and step % every == 0) or step == self.cfg.train.steps

    def save(self) -> None:
        meta = {"world": self.info.world, "config": self.cfg.to_dict(),
                "config_hash": config_hash({**self.cfg.to_dict(), "world": self.info.world}),
                "hf_config": json.loads(self.parts.engine.module.config.to_json_string())}
        self.metrics.flush()          # RUN/metrics.jsonl holds every step up to the checkpoint
        path = checkpoint.save(self.state, self.run_dir, self.counters.step, meta=meta,
                               keep=self.cfg.run.keep_checkpoints)
        if self.mixer is not None and self.info.main:     # the mixture as of this checkpoint
            atomic_write_json(self.run_dir / "mixing.json",
                              self.mixer.trajectory(self.data.train.source_names))
        log0(self.info, f"checkpoint {path}")

    # ------------------------------------------------------------ the end
    def stopped(self) -> int:
        why = self.stop.signal or ("run.time_limit_s" if self.out_of_time
                                   else "a signal to another rank")
        log0(self.info, f"stopped by {why} at step {self.counters.step}; re-run the same "
                        "command to resume")
        self._close()
        log_to(None)
        return EXIT_STOPPED

    def finish(self) -> int:
        t, c = self.cfg.train, self.counters
        final = export_final(self.parts.engine, self.run_dir, self.data.train.tokenizer_path,
                             self.data.train.tokenizer, self.info.main, zero3=t.zero_stage == 3)
        self._close()
        log0(self.info, f"done: {c.step} steps, {c.tokens:,} tokens, {c.skipped_steps} skipped, "
                        f"{time.time() - self.t_start:.0f}s; final model {final}; TensorBoard: "
                        f"tensorboard --logdir {self.run_dir / 'tb'}")
        log_to(None)
        return 0

    def _close(self) -> None:
        self.metrics.close()
        self.ledger.close()
        shutdown(self.parts.engine)
        self.lock.release()


def _acting(s) -> str:
    """What else acts on the values, for the start line (lai.select, lai.weighting)."""
    return ((f", select oversample x{s.select.factor:g}" if s.select.kind != "none" else "")
            + (f", weighting {s.weighting.kind}" if s.weighting.kind != "none" else ""))


@torch.no_grad()
def evaluate(engine, batches: list[tuple[torch.Tensor, torch.Tensor]], comm: Comm) -> float:
    """Token-mean loss over `batches` (input_ids, targets) of every rank."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=batches[0][0].device)
    for input_ids, targets in batches:
        losses = per_sequence_loss(engine(input_ids=input_ids).logits, targets)
        n = (targets != -100).sum(1)
        total += torch.stack([(losses.double() * n).sum(), n.sum().double()])
    engine.train()
    comm.all_reduce(total)
    return float(total[0] / total[1])

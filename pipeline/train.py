"""lai-train: DeepSpeed ZeRO pretraining that values every sequence (LAI) and drops the harmful ones
before the optimizer step.

    python -m pipeline.train CONFIG.yaml [PRESET.yaml ...] [dotted.key=value ...] [--local_rank N]
    deepspeed --num_gpus 2 --module pipeline.train configs/tiny_cpu.yaml train.steps=50
    torchrun --nproc_per_node 2 -m pipeline.train configs/tiny_cpu.yaml

Read top to bottom: setup (config, resume point, data, model, engine) -> the loop (per micro-step:
forward with layer-input capture -> per-sequence loss -> values -> keep mask -> masked loss ->
backward; at the boundary the ZeRO step) -> eval / log / checkpoint / stop -> final export.
Exit codes: 0 finished (RUN/final written), 2 user error, 75 stopped by SIGTERM/SIGUSR1 or
run.time_limit_s after saving a checkpoint (re-run the same command to resume).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import checkpoint, dist
from pipeline.config import (Config, config_hash, data_json, ds_config, load_config,
                             resume_changes, save_yaml)
from pipeline.errors import UserError, cli_main
from pipeline.fsutil import atomic_write, atomic_write_json
from pipeline.step import MicroStats, Selector, build_optimizer, lr_at, masked_loss, set_lr

EXIT_STOPPED = 75
CLIENT_KEY = "lai_train"     # our client state, under one key (DeepSpeed drops its own key names)


def log0(info: dist.DistInfo, msg: str) -> None:
    if info.main:
        print(f"[lai-train] {msg}", flush=True)


# ---------------------------------------------------------------- setup helpers

class StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm preemption, scancel --signal); read at step boundaries."""

    def __init__(self):
        self.signal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name


def resume_point(cfg: Config, run_dir: Path, world: int) -> Path | None:
    """The checkpoint to resume from (None = fresh start); refuses breaking config changes and
    warns about harmless ones."""
    mode = cfg.run.resume
    if mode == "never":
        if checkpoint.latest(run_dir) is not None:
            raise UserError(f"run.resume: never, but {checkpoint.root(run_dir)} already holds "
                            "checkpoints; use run.resume=auto or a new run.out_dir")
        return None
    path = checkpoint.latest(run_dir) if mode == "auto" else Path(mode)
    if path is None:
        return None
    meta = checkpoint.read_meta(path)
    old = {**meta["config"], "world": meta["world"]}
    new = {**cfg.to_dict(), "world": world}
    breaking, harmless = resume_changes(old, new)
    if breaking:
        raise UserError(f"run.resume: {path} was saved with a different config that cannot be "
                        f"resumed ({'; '.join(breaking)}); restore those values or use a new "
                        "run.out_dir")
    if harmless and os.environ.get("RANK", "0") == "0":
        print(f"[lai-train] warning: resuming {path} with changed settings: "
              f"{'; '.join(harmless)}", file=sys.stderr, flush=True)
    return path


def write_run_files(cfg: Config, run_dir: Path, ds: dict, fingerprint: str) -> None:
    """RUN/config.yaml (resolved), RUN/ds_config.json (derived), RUN/data.json (for lai-report)."""
    with atomic_write(run_dir / "config.yaml", "w") as f:
        f.write(save_yaml(cfg))
    atomic_write_json(run_dir / "ds_config.json", ds)
    atomic_write_json(run_dir / "data.json", data_json(cfg, fingerprint))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def clock(device: torch.device) -> float:
    """Seconds, after the device finished its queued work (so step-time parts are real)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


@torch.no_grad()
def evaluate(engine, loader_factory, batches: int, device: torch.device) -> float:
    """Token-mean loss over `batches` val micro-batches per rank (the same ones every time)."""
    from pipeline.lai import per_sequence_loss
    engine.eval()
    loader = loader_factory()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for _ in range(batches):
        b = loader.next_batch()
        targets = b["targets"].to(device)
        losses = per_sequence_loss(engine(input_ids=b["input_ids"].to(device)).logits, targets)
        n = (targets != -100).sum(1)
        total += torch.stack([(losses.double() * n).sum(), n.sum().double()])
    engine.train()
    dist.all_reduce(total)
    return float(total[0] / total[1])


# ---------------------------------------------------------------- the run

def train(cfg: Config, info: dist.DistInfo, resume_from: Path | None) -> int:
    """The run; returns the exit code (0 finished, 75 stopped). `resume_from`: see
    resume_point."""
    import deepspeed

    from pipeline.data import PackedDataset, RankLoader
    from pipeline.flops import achieved_tflops, mfu, model_flops_per_token
    from pipeline.lai import per_sequence_loss
    from pipeline.ledger import Ledger
    from pipeline.metrics import Metrics, source_scalars

    t_start = time.time()
    stop = StopFlag()
    run_dir = Path(cfg.run.out_dir)
    t, d = cfg.train, cfg.data
    cuda = info.device.type == "cuda"
    if cuda:                 # perf/peak_memory_gib is this run's, also in a long-lived process
        torch.cuda.reset_peak_memory_stats(info.device)
    ds = ds_config(cfg, info.world, cuda)

    # data: this rank's slice of every global micro-batch; val split for eval / the val reference
    seed_everything(cfg.run.seed)
    sources = [(s.path, s.weight) for s in d.sources]
    val_sources = [(s.path, s.weight) for s in (d.val_sources or d.sources)]
    train_ds = PackedDataset(sources, d.seq_len, split="train", seed=cfg.run.seed)
    loader = RankLoader(train_ds, t.micro_batch, info.rank, info.world)
    val_ds = None
    if t.eval_every > 0 or (cfg.lai.enabled and cfg.lai.reference == "val"):
        try:
            val_ds = PackedDataset(val_sources, d.seq_len, split="val", seed=cfg.run.seed)
        except UserError as e:
            raise UserError(f"train.eval_every / lai.reference=val need a val split: {e} (set "
                            "train.eval_every=0, or prepare the data with a val fraction)") from None
    tok = train_ds.tokenizer
    if info.main:
        write_run_files(cfg, run_dir, ds, train_ds.fingerprint)

    def val_loader():
        return RankLoader(val_ds, t.micro_batch, info.rank, info.world)

    # model and engine
    from pipeline.model import build_model
    model = build_model(cfg.model, vocab_size=train_ds.vocab_size, seq_len=d.seq_len,
                        bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    flops_per_tok = model_flops_per_token(model, d.seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, t, info.device, offload=t.offload_optimizer != "none")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    selector = Selector(cfg.lai, cfg.run.seed)
    ledger = Ledger(run_dir, info.rank, chunk_rows=cfg.log.ledger_chunk_rows)
    hash_ = config_hash({**cfg.to_dict(), "world": info.world})

    # resume: engine + loader + RNG + LAI + ledger + counters
    done, tokens_seen, skipped_total, bad_in_a_row, val_step = 0, 0, 0, 0, None
    if resume_from is not None:
        client, mine = checkpoint.load(engine, resume_from, info.rank)
        client = client[CLIENT_KEY]
        if client.get("config_hash") != hash_:
            raise UserError(f"run.resume: {resume_from} config hash differs from this run's")
        done, tokens_seen = client["step"], client["tokens"]
        skipped_total, bad_in_a_row = client["skipped_steps"], client["bad_in_a_row"]
        val_step = client["val_step"]
        loader.load_state_dict(client["loader"])
        selector.load_state_dict(mine["lai"])
        ledger.load_state_dict(mine["ledger"])
        checkpoint.set_rng_state(mine["rng"])
        log0(info, f"resumed from {resume_from} at step {done}")
    else:
        ledger.load_state_dict({"next_step": 1})     # drop rows of an unsaved earlier attempt
    metrics = Metrics(run_dir / "tb", info.rank, info.world, purge_step=done + 1)
    if done == 0:
        metrics.text("config", "```\n" + save_yaml(cfg) + "\n```")
    log0(info, f"{n_params / 1e6:.2f}M params, {info.world} rank(s) on {info.device.type}, "
               f"ZeRO {t.zero_stage}, {t.precision}, global batch "
               f"{t.micro_batch}x{t.grad_accum}x{info.world}, LAI "
               f"{'on' if cfg.lai.enabled else 'off'}, filter {cfg.lai.filter}; run dir {run_dir}")

    def save(step: int) -> None:
        client = {"step": step, "tokens": tokens_seen, "skipped_steps": skipped_total,
                  "bad_in_a_row": bad_in_a_row, "val_step": val_step,
                  "loader": loader.state_dict(), "config_hash": hash_}
        mine = {"rng": checkpoint.rng_state(), "lai": selector.state_dict(),
                "ledger": ledger.state_dict()}
        meta = {"world": info.world, "config": cfg.to_dict(), "config_hash": hash_}
        path = checkpoint.save(engine, run_dir, step, client_state={CLIENT_KEY: client},
                               rank_state=mine, meta=meta, rank=info.rank,
                               keep=cfg.run.keep_checkpoints)
        log0(info, f"checkpoint {path}")

    # ------------------------------------------------------------ the loop
    window = _Window()
    while done < t.steps:
        step = done + 1
        lr = lr_at(step, t)
        set_lr(optimizer, lr)
        if selector.needs_val_reference() and (val_step is None
                                                or step - val_step >= cfg.lai.val_refresh_every):
            vl = val_loader()
            batches = [vl.next_batch() for _ in range(cfg.lai.val_batches)]
            selector.refresh_val_reference(
                engine.module, [(b["input_ids"].to(info.device), b["targets"].to(info.device))
                                for b in batches])
            val_step = step
        step_bad, grad_norm = False, None
        step_stats: list[MicroStats] = []
        step_values: list[torch.Tensor] = []
        for micro in range(t.grad_accum):
            t0 = clock(info.device)
            batch = loader.next_batch()
            input_ids = batch["input_ids"].to(info.device)
            targets = batch["targets"].to(info.device)
            t1 = clock(info.device)
            with selector.capture(engine.module) as cap:
                logits = engine(input_ids=input_ids).logits
            losses = per_sequence_loss(logits, targets)
            t2 = clock(info.device)
            values, keep = selector.select(step, cap, logits, targets, losses, batch["seq_ids"],
                                           input_ids=input_ids, model=engine.module)
            t3 = clock(info.device)
            n_tokens = (targets != -100).sum(1)
            loss, stats = masked_loss(losses, n_tokens, keep, info.world)
            step_bad |= stats.nonfinite
            del cap, logits
            engine.backward(loss)
            if engine.is_gradient_accumulation_boundary():
                optimizer.skip = step_bad
                calls = optimizer.calls
                if t.zero_stage == 0 and t.precision == "fp32":   # DeepSpeed keeps no norm here
                    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                    grad_norm = float(torch.nn.utils.get_total_norm(grads))
            engine.step()
            t4 = clock(info.device)
            ledger.append(step, batch["seq_ids"], values, keep, losses.detach())
            window.add_micro(t1 - t0, t2 - t1, t3 - t2, t4 - t3, int(n_tokens.sum()),
                             batch["seq_ids"], values, keep)
            step_stats.append(stats)
            step_values.append(values)

        skipped = optimizer.last_skipped or optimizer.calls == calls
        optimizer.skip = False
        if grad_norm is None:
            gn = engine.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else float("nan")
        done = step
        tokens_seen += int(sum(s.tokens for s in step_stats))
        if skipped:
            skipped_total += 1
            bad_in_a_row += 1
            log0(info, f"step {step}: non-finite loss or gradient norm, update skipped "
                       f"({bad_in_a_row} in a row)")
            if bad_in_a_row >= t.max_nonfinite_steps:
                raise UserError(f"train.max_nonfinite_steps: {bad_in_a_row} steps in a row had a "
                                f"non-finite loss or gradient norm (last at step {step}); lower "
                                "train.lr, raise train.warmup_steps, or check the data")
        else:
            bad_in_a_row = 0
        window.add_step(step_stats, grad_norm, lr)

        # ---------------------------------------------------------- log, eval, save, stop
        if step % cfg.log.every == 0 or step == t.steps:
            rank_tps = window.rank_tokens / max(window.seconds, 1e-9)
            all_tps = float(dist.all_reduce(torch.tensor([rank_tps], dtype=torch.float64,
                                                         device=info.device)).item())
            scalars = window.scalars()
            scalars.update({"train/skipped_steps": skipped_total, "train/tokens": tokens_seen,
                            "perf/tokens_per_s": all_tps,
                            "perf/tflops_per_device": achieved_tflops(all_tps, flops_per_tok)
                            / info.world})
            if cfg.log.peak_tflops > 0:
                scalars["perf/mfu"] = mfu(all_tps, flops_per_tok, cfg.log.peak_tflops, info.world)
            parts = dist.gather_objects(window.source_rows(train_ds))
            srcs, vals, kept = (sum((p[i] for p in parts), []) for i in range(3))
            if srcs:
                scalars.update(source_scalars(srcs, vals, kept))
            metrics.scalars(step, scalars)
            metrics.rank_scalars(step, {**window.rank_scalars(), "perf/tokens_per_s_rank": rank_tps,
                                        "perf/peak_memory_gib": peak_memory_gib(info.device)})
            log0(info, f"step {step}/{t.steps} loss {scalars['train/loss']:.4f} "
                       f"excluded {scalars['lai/excluded_frac']:.2%} lr {lr:.2e} "
                       f"grad_norm {grad_norm:.3f} {all_tps:,.0f} tok/s")
            window = _Window()
        if cfg.log.histogram_every and step % cfg.log.histogram_every == 0 and cfg.lai.enabled:
            vals = torch.cat(dist.gather_tensors(torch.cat(step_values)))
            metrics.histogram(step, "lai/values", vals)
        if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            val_loss = evaluate(engine, val_loader, t.eval_batches, info.device)
            metrics.scalars(step, {"val/loss": val_loss,
                                   "val/ppl": math.exp(min(val_loss, 50.0))})
            log0(info, f"step {step}: val loss {val_loss:.4f} "
                       f"ppl {math.exp(min(val_loss, 50.0)):.2f}")
        out_of_time = cfg.run.time_limit_s > 0 and time.time() - t_start >= cfg.run.time_limit_s
        stopping = dist.any_rank(stop.signal is not None or out_of_time, info.device)
        if (cfg.run.save_every and step % cfg.run.save_every == 0) or step == t.steps \
                or stopping:
            save(step)
        if stopping and step < t.steps:
            why = stop.signal or ("run.time_limit_s" if out_of_time else "a signal to another rank")
            log0(info, f"stopped by {why} at step {step}; re-run the same command to resume")
            metrics.close()
            ledger.close()
            dist.shutdown(engine)
            return EXIT_STOPPED

    # ------------------------------------------------------------ final export
    final = checkpoint.export_final(engine, run_dir, train_ds.tokenizer_path, tok, info.main,
                                    zero3=t.zero_stage == 3)
    metrics.close()
    ledger.close()
    dist.shutdown(engine)
    log0(info, f"done: {done} steps, {tokens_seen:,} tokens, {skipped_total} skipped, "
               f"{time.time() - t_start:.0f}s; final model {final}; TensorBoard: "
               f"tensorboard --logdir {run_dir / 'tb'}")
    return 0


class _Window:
    """Accumulates what is logged every log.every steps (rank-local until `scalars`)."""

    def __init__(self):
        self.t_data = self.t_fwd = self.t_lai = self.t_bwd = 0.0
        self.rank_tokens = 0
        self.steps = 0
        self.loss = self.kept_loss = self.kept_tokens = self.excluded = self.sequences = 0.0
        self.grad_norm = self.lr = float("nan")
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def seconds(self) -> float:
        return self.t_data + self.t_fwd + self.t_lai + self.t_bwd

    def add_micro(self, t_data, t_fwd, t_lai, t_bwd, rank_tokens, seq_ids, values,
                  keep) -> None:
        self.t_data += t_data
        self.t_fwd += t_fwd
        self.t_lai += t_lai
        self.t_bwd += t_bwd
        self.rank_tokens += rank_tokens
        self.rows.append((seq_ids.cpu(), values.cpu(), keep.cpu()))

    def add_step(self, stats: list[MicroStats], grad_norm: float, lr: float) -> None:
        self.steps += 1
        self.loss += sum(s.loss for s in stats) / len(stats)
        self.kept_loss += sum(s.kept_loss for s in stats) / len(stats)
        self.kept_tokens += sum(s.kept_tokens for s in stats)
        self.excluded += sum(s.seqs - s.kept_seqs for s in stats)
        self.sequences += sum(s.seqs for s in stats)
        self.grad_norm, self.lr = grad_norm, lr

    def scalars(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"train/loss": self.loss / n, "train/loss_kept": self.kept_loss / n,
                "train/lr": self.lr, "train/grad_norm": self.grad_norm,
                "lai/excluded_frac": self.excluded / max(self.sequences, 1.0),
                "lai/kept_tokens": self.kept_tokens / n}

    def rank_scalars(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"perf/time_data_s": self.t_data / n, "perf/time_forward_s": self.t_fwd / n,
                "perf/time_lai_s": self.t_lai / n, "perf/time_backward_step_s": self.t_bwd / n}

    def source_rows(self, dataset) -> tuple[list[str], list[float], list[bool]]:
        srcs, vals, kept = [], [], []
        for seq_ids, values, keep in self.rows:
            srcs += [dataset.locate(int(i))[0].source for i in seq_ids]
            vals += values.tolist()
            kept += keep.tolist()
        return srcs, vals, kept


# ---------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lai-train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*",
                   help="more YAML files merged in order (e.g. configs/zero/stage3.yaml), then "
                        "dotted.key=value overrides, e.g. train.steps=20")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by the deepspeed launcher")
    return p.parse_args(argv)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    presets = [a for a in args.overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    overrides = [a for a in args.overrides if a not in presets]
    cfg = load_config([args.config, *presets], overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.validate(world=world)                             # fail before any start-up
    resume_from = resume_point(cfg, Path(cfg.run.out_dir), world)
    info = dist.init(args.local_rank)
    try:
        return train(cfg, info, resume_from)
    finally:
        dist.shutdown(clean=False)     # a no-op after train's own clean shutdown


if __name__ == "__main__":
    sys.exit(main())

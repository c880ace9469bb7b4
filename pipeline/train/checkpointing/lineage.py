"""`run.continue_from=CKPT`: a new run that starts where another run's checkpoint left off (for
annealing, mid-training on a new mix, continued pretraining), with its optimizer.

    origin = plan(cfg, world)        # None unless run.continue_from is set and RUN is fresh
    checkpoint.load_engine(engine, origin.path, universal=origin.universal)
    write(run_dir, origin)           # RUN/lineage.json

Kept from CKPT: the model weights and the optimizer state (AdamW moments and step counts, so the
bias correction goes on). Started anew: the data order (the loader of this config: new
data.sources and weights are fine), the LR schedule (this config's train.schedule over its
train.steps, from step 1; e.g. train.schedule=linear train.min_lr=0 train.warmup_steps=0 decays to
zero), the step and token counters, the ledger, LAI memory and mixing state. What must still
match, else one line refuses it: the model's shape, seq_len and the optimizer-state layout
(CONTINUE_BREAKING). Once this run has checkpoints of its own, it resumes from them as any run
does (run.continue_from is then not read again).

RUN/lineage.json: {"continued_from": {"checkpoint", "run_dir", "step", "world", "config_hash"},
"changes": ["key: old -> new", ...], "parent": the source run's own lineage.json or null}.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_json, read_json
from pipeline.train.checkpointing import checkpoint
from pipeline.train.checkpointing.resume import needs_universal, resume_changes

CONTINUE_BREAKING = ("model.", "data.seq_len", "train.backend", "train.zero_stage",
                     "train.precision", "train.offload_optimizer", "train.offload_params")
LINEAGE_NAME = "lineage.json"


@dataclass
class Origin:
    path: Path                     # the checkpoint this run starts from
    step: int
    saved_world: int
    changes: list[str] = field(default_factory=list)
    config_hash: str = ""
    universal: bool = False        # ZeRO partitions of another world size: load CKPT/universal
    conversion: str = ""           # what the universal conversion did (set when it ran)

    def note(self) -> str:
        changed = f"; changed: {'; '.join(self.changes)}" if self.changes else ""
        same_order = not any(c.startswith(("data.sources", "run.seed")) for c in self.changes)
        repeat = ("; warning: same data.sources and run.seed as that run, so the data order "
                  "starts again from its beginning (set another run.seed for a new order)"
                  if same_order else "")
        return (f"continued from {self.path} (step {self.step}): model and optimizer state kept; "
                f"new data order, LR schedule and counters from step 1{changed}{repeat}"
                + (f"; {self.conversion}" if self.conversion else ""))


def plan(cfg: Config, world: int) -> Origin | None:
    """The checkpoint run.continue_from names, checked against this config (UserError, one line,
    if it cannot start this run); None when run.continue_from is empty."""
    if not cfg.run.continue_from:
        return None
    path = Path(cfg.run.continue_from)
    meta = checkpoint.read_meta(path)
    if problem := checkpoint.damage(path):
        raise UserError(f"run.continue_from: {path}: {problem}")
    if cfg.model.init_from:
        raise UserError("run.continue_from: not with model.init_from (both say where the "
                        "weights come from); keep one")
    saved_world = int(meta["world"])
    breaking, allowed = resume_changes({**meta["config"], "world": saved_world},
                                       {**cfg.to_dict(), "world": world}, CONTINUE_BREAKING)
    if breaking:
        raise UserError(f"run.continue_from: {path} was saved with a model or optimizer layout "
                        f"this run cannot take over ({'; '.join(breaking)})")
    return Origin(path, int(meta["step"]), saved_world, allowed, meta.get("config_hash", ""),
                  universal=needs_universal(cfg, saved_world, world))


def write(run_dir: Path, origin: Origin) -> None:
    """RUN/lineage.json (see the module doc)."""
    ckpt = origin.path.resolve()
    parent = ckpt.parent.parent / LINEAGE_NAME
    atomic_write_json(run_dir / LINEAGE_NAME, {
        "continued_from": {"checkpoint": str(ckpt), "run_dir": str(ckpt.parent.parent),
                           "step": origin.step, "world": origin.saved_world,
                           "config_hash": origin.config_hash},
        "changes": origin.changes,
        "parent": read_json(parent) if parent.is_file() else None})

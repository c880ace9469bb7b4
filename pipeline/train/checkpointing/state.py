"""TrainState: everything a checkpoint saves and restores, as one object.

    state = TrainState(engine, rank)
    state.register("loader", loader)                      # global: identical on every rank
    state.register("ledger", ledger, per_rank=True)       # each rank's own
    checkpoint.save(state, run_dir, step, ...); checkpoint.load(state, path)

The DeepSpeed engine (model, optimizer, ZeRO partitions) is saved by DeepSpeed; every other
member is a named component with `state_dict()` / `load_state_dict(d)`. Global members go into
DeepSpeed's client state (written from rank 0, read by every rank), per-rank members into the
rank's own file. `state_dict()` is called on every rank at every save (a member may commit
rank-local work then, as the ledger flushes). A member registered with `optional=True` keeps its
fresh state when a checkpoint predates it; any other missing member refuses the checkpoint.

Resuming on another number of ranks: global members load as always; a per-rank member says how
it resumes with `elastic=`: "rank0" (its state is the same on every rank: every rank loads rank
0's copy), "fresh" (it keeps its fresh state, e.g. a cache made for the old rank slicing), or
None (the checkpoint is refused).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.errors import UserError


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


ELASTIC = ("rank0", "fresh")


@dataclass
class _Member:
    component: Stateful
    per_rank: bool
    optional: bool
    elastic: str | None


class TrainState:
    def __init__(self, engine, rank: int):
        self.engine, self.rank = engine, rank
        self._members: dict[str, _Member] = {}

    def register(self, name: str, component: Stateful, *, per_rank: bool = False,
                 optional: bool = False, elastic: str | None = None) -> None:
        if name in self._members:
            raise ValueError(f"TrainState: {name!r} is registered twice")
        if elastic not in (None, *ELASTIC):
            raise ValueError(f"TrainState: elastic must be one of {ELASTIC} or None, got {elastic!r}")
        self._members[name] = _Member(component, per_rank, optional, elastic)

    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(global state, this rank's state), each {member name: its state_dict()}."""
        out: tuple[dict, dict] = ({}, {})
        for name, m in self._members.items():
            out[m.per_rank][name] = m.component.state_dict()
        return out

    def load_state_dicts(self, global_state: dict, rank_state: dict, where: str, *,
                         same_world: bool = True) -> None:
        """Restore every member from the two dicts of `state_dicts`; `where` names the
        checkpoint in errors. same_world=False: `rank_state` is rank 0's, saved with another
        number of ranks, and per-rank members resume as their `elastic` says."""
        for name, m in self._members.items():
            if m.per_rank and not same_world:
                if m.elastic is None:
                    raise UserError(f"{where}: saved with another number of ranks, and its "
                                    f"per-rank {name!r} state cannot be carried over")
                if m.elastic == "fresh":
                    continue
            saved = (rank_state if m.per_rank else global_state).get(name)
            if saved is None:
                if m.optional:
                    continue
                raise UserError(f"{where}: the checkpoint has no {name!r} state (saved by another "
                                "version of lai-train?)")
            m.component.load_state_dict(saved)


@dataclass
class Counters:
    """The step counters (global: identical on every rank)."""
    step: int = 0                 # optimizer steps done
    tokens: int = 0               # target tokens trained on (all ranks)
    skipped_steps: int = 0        # steps whose update was skipped
    bad_in_a_row: int = 0         # skipped steps since the last applied one

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k in asdict(self):
            setattr(self, k, int(d[k]))


class RNGState:
    """Python, numpy and torch (CPU and CUDA) generator states of this process."""

    def state_dict(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(),
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

"""Curves a run wrote to TensorBoard that the report shows next to the ledger: the val loss of
the val mix (`val/loss`, as "all") and of each source's own val split (`val/<source>/loss`),
read from the global event files in RUN/tb (a resumed run's purged steps left out, as
TensorBoard shows them)."""
from __future__ import annotations

from pathlib import Path


def val_curves(run_dir: Path) -> dict:
    """{"mix": curve or None, "sources": {source: curve}}, each curve {"steps": [...], "loss":
    [...]} in step order; empty without RUN/tb or evals."""
    out: dict = {"mix": None, "sources": {}}
    tb = run_dir / "tb"
    if not tb.is_dir():
        return out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in sorted(acc.Tags()["scalars"]):
        parts = tag.split("/")
        if tag != "val/loss" and not (len(parts) == 3 and parts[0] == "val" and parts[2] == "loss"):
            continue
        events = sorted(acc.Scalars(tag), key=lambda e: e.step)
        curve = {"steps": [int(e.step) for e in events], "loss": [float(e.value) for e in events]}
        if tag == "val/loss":
            out["mix"] = curve
        else:
            out["sources"][parts[1]] = curve
    return out

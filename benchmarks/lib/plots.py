"""Plots of paired trainer runs (matplotlib)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def plot_paired_curves(ax, ax2, results: dict, style: Callable[[str], str], ylabel: str,
                       ylabel2: str, band: bool = False) -> None:
    """Per variant of results {variant: {seed: {"val_steps", "val_loss"}}}: on `ax` the val loss
    (mean over seeds; `band`: min..max), on `ax2` minus the "none" run of the same seed. A style
    without a colour letter ("-", "-.") gets a colour of its own (up to 20 variants)."""
    from matplotlib import colormaps
    palette = iter(colormaps["tab20"].colors)
    none = results.get("none", {})
    for name, by_seed in results.items():
        rs = list(by_seed.values())
        n = min(len(r["val_loss"]) for r in rs)
        if n == 0:
            continue
        steps = np.asarray(rs[0]["val_steps"][:n])
        vals = np.asarray([r["val_loss"][:n] for r in rs])
        fmt = style(name)
        kw = {"label": name, "lw": 1.2}
        if fmt[:1] not in tuple("bgrcmykw"):
            kw["color"] = next(palette, None)
        ax.plot(steps, vals.mean(0), fmt, **kw)
        if band:
            ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.12, color=kw.get("color"))
        seeds = [k for k in by_seed if k in none and len(none[k]["val_loss"]) >= n]
        if seeds:
            d = np.asarray([np.asarray(by_seed[k]["val_loss"][:n])
                            - np.asarray(none[k]["val_loss"][:n]) for k in seeds])
            ax2.plot(steps, d.mean(0), fmt, **kw)
    ax2.axhline(0, color="gray", lw=1)
    for a, label in ((ax, ylabel), (ax2, ylabel2)):
        a.set_xlabel("step")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)

"""pipeline.train.quiet: the known-harmless deprecation warnings of DeepSpeed's ZeRO and FSDP2's
fully_shard are silenced by their exact text, every other warning still shows."""
from __future__ import annotations

import warnings


def test_known_collective_deprecations_are_silenced_and_nothing_else():
    from pipeline.train.quiet import silence_known_noise
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_known_noise()
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor", "all_gather"):
            warnings.warn(f"`torch.distributed.{name}` is deprecated. Please use ...", FutureWarning,
                          stacklevel=1)
        warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated.", UserWarning,
                      stacklevel=1)
    assert [(w.category, str(w.message)[:40]) for w in seen] == [
        (FutureWarning, "`torch.distributed.all_gather` is deprec"),
        (UserWarning, "`torch.distributed.reduce_scatter_tensor"),
    ]

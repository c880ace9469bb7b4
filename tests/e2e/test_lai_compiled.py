"""The torch.compile path of the sketch kernels (inductor compiles C++ on CPU: slow) against the
eager kernels (the sketch itself: unit/test_lai_sketch.py)."""
import pytest
import torch

from pipeline.lai import lai_values


@pytest.mark.slow
def test_compiled_kernels_equal_eager(trained_tiny):
    """The torch.compile path (the GPU default) computes what the eager kernels do; here with
    inductor's CPU backend."""
    from pipeline.lai.kernels.sketch import Kernels
    model, ids = trained_tiny
    eager = lai_values(model, ids[:8], method="sketch", compile=False)
    compiled = lai_values(model, ids[:8], method="sketch", compile=True)
    assert Kernels._failed is None, Kernels._failed
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-9), (compiled, eager)

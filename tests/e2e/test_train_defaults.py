"""What ships never trains differently from no valuation: with the defaults (LAI on, lai.filter
none) the run values every sequence and trains bit for bit what lai.enabled=false trains (same
parameters, same losses), on the real trainer path (torchrun, 2 ranks, DeepSpeed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support.train import final_params, ledger, make_animals_data, train

pytestmark = pytest.mark.slow


def test_the_shipped_default_trains_exactly_what_no_valuation_trains(tmp_path):
    from pipeline.config import load_config
    from support.train import CONFIG
    assert load_config(CONFIG, []).lai.filter.kind == "none" and load_config(None, []).lai.enabled
    data = make_animals_data(tmp_path)
    # the tiny run turns the filter on; the shipped default (asserted above) is none
    out = train(data, tmp_path / "shipped", "run.save_every=0", "lai.filter.kind=none")
    train(data, tmp_path / "off", "run.save_every=0", "lai.enabled=false", "lai.filter.kind=none")
    assert "filter none" in out
    a, b = final_params(tmp_path / "shipped"), final_params(tmp_path / "off")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    valued, plain = ledger(tmp_path / "shipped"), ledger(tmp_path / "off")
    assert valued["kept"].all() and np.isfinite(valued["value"]).all()
    assert np.array_equal(valued["loss"], plain["loss"]) and np.isnan(plain["value"]).all()

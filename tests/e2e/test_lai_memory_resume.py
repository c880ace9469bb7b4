"""LAI's memory across epochs is trainer state: through the real trainer it survives a resume
bit for bit (its definition and update: unit/test_lai_memory.py)."""
import pytest

from support import ROOT


@pytest.mark.slow
def test_memory_is_trainer_state_resumed_bit_for_bit(tmp_path):
    """Through the real trainer, over ~2 epochs of a tiny corpus (documents come round again):
    a run stopped after 4 steps and extended to 8 equals the straight 8-step run, keep decisions
    included -- which needs the memory restored (without it the second half decides
    differently)."""
    import numpy as np

    from pipeline.format.ledger import read_ledger
    from support.datagen import make_data_dir, random_docs
    from support.train import run_train
    data = make_data_dir(tmp_path / "data", random_docs(30, 64, min_len=8, max_len=30, seed=3),
                         vocab_size=64)

    def train(run, steps):
        args = [str(ROOT / "configs" / "tiny_cpu.yaml"), f"run.out_dir={run}",
                f"data.sources=[{{path: '{data}', weight: 1.0}}]", "data.seq_len=32",
                "model.n_layer=1", "model.hidden=32", "model.n_head=2", "train.micro_batch=4",
                "train.global_batch=0", f"train.steps={steps}", "train.zero_stage=0", "train.schedule=constant",
                "train.eval_every=0", "lai.score.reference=global", "lai.warmup_steps=0",
                "lai.filter.kind=lai", "lai.filter.normalize=zscore", "lai.filter.threshold=-0.3", "lai.memory.weight=2.0",
                "lai.filter.max_exclude_frac=0.5", "log.every=1", "run.save_every=0"]
        run_train(args, ranks=1)

    train(tmp_path / "straight", 8)
    train(tmp_path / "split", 4)
    train(tmp_path / "split", 8)
    a, b = read_ledger(tmp_path / "straight"), read_ledger(tmp_path / "split")
    assert a.size == b.size == 32
    for f in ("seq_id", "value", "value_norm", "kept"):
        assert np.array_equal(a[f], b[f]), f"ledger column {f} differs"
    assert (~a["kept"][a["step"] > 4]).any()

"""What a run leaves and prints, on real one-process runs (ZeRO 0; the ZeRO-3 export is in
test_train_elastic):

- timestamped log lines, copied to RUN/train.log; the data summary at the start; "LAI warming
  up" while lai.warmup_steps lasts; the value histogram at the end of a short run; a one-line
  description on every LAI chart in TensorBoard;
- lai-export of the last checkpoint equals RUN/final; both exports have use_cache on
  (config.json, generation_config.json) and the tokenizer's max length at the model's context;
- model.init_from=RUN/final continues from those weights: the new run's first losses are the
  exported model's own losses on the same sequences;
- a folder whose tokenizer, vocabulary or context does not fit the data is refused in one line
  that names the lai-prep fix.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from support import ROOT
from support.train import ledger, train

pytestmark = pytest.mark.slow
ZERO0 = ["train.zero_stage=0", "train.eval_every=0"]


@pytest.fixture(scope="module")
def base(animals_data, tmp_path_factory) -> tuple[Path, str]:
    """3 steps with LAI filtering from step 3 (lai.warmup_steps=2), histograms every 4 steps."""
    run = tmp_path_factory.mktemp("runs") / "base"
    out = train(animals_data, run, *ZERO0, "train.steps=3", "run.save_every=3",
                "lai.warmup_steps=2", ranks=1)
    return run, out


def test_logs_summary_warmup_note_and_tensorboard_descriptions(base):
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.train.metrics import DESCRIPTIONS, description
    run, out = base
    lines = [line for line in out.splitlines() if line.startswith("[lai-train ")]
    stamp = re.compile(r"\[lai-train \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")
    assert lines and all(stamp.match(line) for line in lines), lines[:3]
    assert (run / "train.log").read_text().splitlines() == lines          # the same lines
    text = "\n".join(lines)
    assert re.search(r"data: \S+ \(animals\): [\d,]+ train tokens in 440 documents", text)
    assert "this run: 3 steps x 4 sequences x 32 tokens = 384 tokens" in text
    for step in (1, 2):
        assert re.search(rf"step {step}/3 loss \S+ excluded 0\.00% \(LAI warming up: filtering "
                         r"starts at step 3\)", text), step
    assert re.search(r"step 3/3 loss \S+ excluded [\d.]+% lr", text)
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Histograms("lai/values")] == [3]     # at the end of a short run
    lai_tags = [t for t in ea.Tags()["scalars"] + ea.Tags()["histograms"]
                if t.startswith(("lai/", "lai_source/"))]
    assert len(lai_tags) >= 5
    for tag in lai_tags:
        assert ea.SummaryMetadata(tag).summary_description == description(tag), tag
    assert "lowers the loss" in DESCRIPTIONS["lai/values"] and "< 0 worse than the step's " \
        "average" in DESCRIPTIONS["lai_source/*/mean_value_norm"]
    for key in DESCRIPTIONS:                  # every description belongs to a tag that is written
        if key.startswith(("lai/", "lai_source/")):
            assert key.replace("*", "animals") in lai_tags, key
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"which sign is good, e\.g\. `(lai_source/<source>/\w+)`", readme)
    assert example and example[1].replace("<source>", "animals") in lai_tags


def _losses(model_dir: Path, animals_data: Path, seq_ids) -> np.ndarray:
    """Per-sequence mean loss of the saved model on the run's samples `seq_ids`."""
    import transformers

    from pipeline.data import PackedDataset
    from pipeline.lai import per_sequence_loss
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ds = PackedDataset([(animals_data, 1.0)], 32, split="train", seed=0)
    x = torch.from_numpy(np.stack([ds.sample(int(i)) for i in seq_ids]))
    with torch.no_grad():
        return per_sequence_loss(model(input_ids=x[:, :-1]).logits, x[:, 1:]).numpy()


def test_export_of_a_checkpoint_equals_final_and_is_ready_to_generate(base, tmp_path):
    import transformers
    trained, _ = base
    from safetensors.torch import load_file

    from pipeline.train.hf.export_checkpoint import main as lai_export
    out = tmp_path / "exported"
    assert lai_export([str(trained / "checkpoints" / "step_00000003"), str(out)]) == 0
    a, b = load_file(trained / "final" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for folder in (trained / "final", out):
        assert json.loads((folder / "config.json").read_text())["use_cache"] is True
        assert json.loads((folder / "generation_config.json").read_text())["use_cache"] is True
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        assert tok.model_max_length == 32                       # data.seq_len, the context
    with pytest.raises(SystemExit) as e:                       # never over an existing folder
        lai_export([str(trained / "checkpoints" / "step_00000003"), str(out)])
    assert e.value.code == 2


def test_init_from_continues_from_the_folder(base, animals_data, tmp_path):
    (trained, _), run = base, tmp_path / "continued"
    out = train(animals_data, run, *ZERO0, "train.steps=2", "run.save_every=0",
                f"model.init_from={trained / 'final'}", "model.hidden=32", ranks=1)
    assert f"init from {trained / 'final'} (LlamaConfig, the data's tokenizer)" in out
    rows = ledger(run)
    first = rows[rows["step"] == 1]
    np.testing.assert_allclose(first["loss"], _losses(trained / "final", animals_data,
                                                      first["seq_id"]), rtol=0, atol=1e-4)
    cfg = json.loads((run / "final" / "config.json").read_text())
    assert cfg["hidden_size"] == 64                        # the folder's shape, not model.hidden


def test_init_from_refuses_what_does_not_fit(base, animals_data, tmp_path):
    trained, _ = base
    from support.datagen import make_data_dir, random_docs
    from pipeline.data import PackedDataset
    from pipeline.errors import UserError
    from pipeline.train.hf.init_from import check
    final = trained / "final"

    def refused(data: Path, seq_len: int = 32) -> str:
        ds = PackedDataset([(data, 1.0)], seq_len)
        with pytest.raises(UserError) as e:
            check(final, ds.tokenizer, ds.tokenizer_path, seq_len, data)
        assert "\n" not in str(e.value)
        return str(e.value)

    vocab = json.loads((final / "config.json").read_text())["vocab_size"]
    other = make_data_dir(tmp_path / "other", random_docs(50, vocab, min_len=40), vocab_size=vocab)
    assert f"lai-prep --tokenizer spm:{final / 'tokenizer.model'}" in refused(other)
    bigger = make_data_dir(tmp_path / "bigger", random_docs(50, 512, min_len=40), vocab_size=512)
    assert f"vocabulary of {vocab} ids, the data's tokenizer" in refused(bigger)
    assert "data.seq_len 48 is longer than the context" in refused(animals_data, 48)
    hf_only = tmp_path / "hf_only"                       # an HF tokenizer only: vocab compared
    shutil.copytree(final, hf_only)
    (hf_only / "tokenizer.model").unlink()
    ds = PackedDataset([(animals_data, 1.0)], 32)
    assert "the data's tokenizer" in check(hf_only, ds.tokenizer, ds.tokenizer_path, 32, animals_data)

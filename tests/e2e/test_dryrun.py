"""lai-train --dry-run / --check and the launcher's check before it starts ranks (no training:
one process each, seconds):

- --dry-run validates config and data and prints the resolved config, the DeepSpeed JSON, the
  parameter count, tokens per step, epochs, a memory estimate and the warnings a run would print
  (here: repeated data, a tiny val split); it starts nothing and writes nothing;
- launch/train.sh checks before deepspeed spawns any rank: a typo is one error line (not one per
  rank plus a DeepSpeed [ERROR]); launch/train.sh --dry-run plans for the ranks it would start.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from support.datagen import make_data_dir, random_docs
from pipeline.comm import free_port

CONFIG = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """200 short documents (repeated by a 200-step run) and a val split of 3 short ones."""
    out = tmp_path_factory.mktemp("small")
    return make_data_dir(out / "data", random_docs(200, 512, min_len=8, max_len=64),
                         val_docs=random_docs(3, 512, min_len=8, max_len=20, seed=1))


def overrides(data: Path, run: Path) -> list[str]:
    return [f"data.sources=[{{path: {data}, weight: 1.0}}]", "data.seq_len=32",
            f"run.out_dir={run}"]


def lai_train(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "pipeline.train", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_prints_the_plan_and_starts_nothing(small, tmp_path):
    run = tmp_path / "run"
    p = lai_train("--dry-run", "--world", 4, CONFIG, *overrides(small, run))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    yaml_part, rest = out.split("# DeepSpeed config (RUN/ds_config.json)\n")
    assert "grad_accum: 1" in yaml_part and "micro_batch: 4" in yaml_part   # 16 over 4 ranks
    ds = json.loads(rest[:rest.index("\n}\n") + 2])
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert "model: 0.92M parameters (LlamaConfig)" in out
    assert "batch: global 16 = micro 4 x accumulation 1 x 4 rank(s); 512 tokens per step" in out
    assert "this run: 200 steps x 16 sequences x 32 tokens = 102,400 tokens" in out
    assert "epochs of the mix" in out and "memory per device (estimate): ~" in out
    assert "lai reference: global (the global micro-batch itself: self-influence)" in out
    assert "time (estimate): none; set log.peak_tflops" in out            # tiny_cpu sets none
    assert f"fresh start in {run}" in out and out.strip().endswith("dry run: nothing was started")
    assert "warning: this run repeats data" in out and "warning: the val split is tiny" in out
    assert not run.exists()

    p = lai_train("--check", "--world", 2, CONFIG, *overrides(small, run))
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
    p = lai_train("--check", "--world", 3, CONFIG, *overrides(small, run))
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: train.global_batch: 16 sequences do not split evenly over 3 ranks; use a "
        "multiple of 3, or a number of ranks that divides 16"]


@pytest.fixture(scope="module")
def vocab32k(tmp_path_factory) -> Path:
    """A Llama-sized vocabulary (32000), so the estimates below are those of the real models."""
    out = tmp_path_factory.mktemp("v32k")
    return make_data_dir(out / "data", random_docs(64, 32000, min_len=64, max_len=512),
                         vocab_size=32000, val_docs=random_docs(24, 32000, min_len=400, max_len=512,
                                                                seed=1))


GIB = 2**30


def gib(line: str, label: str) -> float:
    import re
    return float(re.search(re.escape(label) + r" ~?([\d.]+)", line)[1])


@pytest.mark.parametrize("name, world, params, matmul, layer_inputs", [
    # GPT-2 small: wte + wpe + 12 x (12 d^2 + 13 d) + ln_f, tied head; matmul: blocks + head
    ("gpt2_small", 8, 32000 * 768 + 1024 * 768 + 12 * (12 * 768**2 + 13 * 768) + 2 * 768,
     12 * 12 * 768**2 + 32000 * 768, 0),
    # Llama-2-7B: 32 x (4 d^2 + 3 d I + 2 d) + embed + untied head + final norm
    ("llama_7b", 64, 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 32000 * 4096 + 4096,
     32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096,
     2 * 4096 * (32 * (3 * 4096 + 11008) + 4096) * 2),     # checkpointing: inputs held, bf16
])
def test_shipped_large_configs_pass_the_dry_run_with_memory_and_time(vocab32k, tmp_path, capsys,
                                                                     name, world, params, matmul,
                                                                     layer_inputs):
    """configs/gpt2_small.yaml and configs/llama_7b.yaml load, validate and plan (the model on
    the meta device: no 7B weights are allocated); the memory estimate includes the logits (bf16, with their gradient)
    and LAI's buffers, and the time estimate follows from log.peak_tflops, all by hand here."""
    from pipeline.config import load_config
    data = [f"data.sources=[{{path: {vocab32k}, weight: 1.0}}]", f"run.out_dir={tmp_path}/r"]
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", data).validate(world)
    t, seq = cfg.train, cfg.data.seq_len
    from pipeline.train.cli import main
    assert main(["--dry-run", "--world", str(world), str(ROOT / "configs" / f"{name}.yaml"),
                 *data]) == 0
    out = capsys.readouterr().out
    assert f"model: {params / 1e6:.2f}M parameters" in out
    mem = next(x for x in out.splitlines() if x.startswith("memory per device"))
    logits = t.micro_batch * seq * 32000 * (2 * 2 + (4 if cfg.lai.score.method == "exact" else 0))
    softmax = min(t.micro_batch * seq * 32000, 1 << 28) * 4
    sketches = (t.micro_batch + 1) * cfg.lai.score.sketch_dim * 4
    assert gib(mem, "logits") == round(logits / GIB, 2)
    assert gib(mem, "LAI buffers") == round((layer_inputs + softmax + sketches) / GIB, 2)
    assert gib(mem, "softmax block") == round(softmax / GIB, 2)
    parts = sum(gib(mem, k) for k in ("model states", "activations", "logits", "LAI buffers"))
    assert gib(mem, "(estimate):") == pytest.approx(parts, abs=0.03)   # the total counts them
    step = (6 * matmul + 12 * cfg.model.n_layer * cfg.model.hidden * seq) * t.global_batch * seq
    secs = [step / (989e12 * world * u) for u in (0.40, 0.16)]
    assert (f"time (estimate): {secs[0]:.2f}-{secs[1]:.2f} s per step, "
            f"{secs[0] * t.steps / 3600:,.1f}-{secs[1] * t.steps / 3600:,.1f} h for "
            f"{t.steps:,} steps on {world} device(s)") in out


def launch(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()),
           "CUDA_VISIBLE_DEVICES": ""}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return subprocess.run([str(ROOT / "launch" / "train.sh"), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_launcher_checks_before_starting_ranks(small, tmp_path):
    run = tmp_path / "run"
    p = launch(CONFIG, *overrides(small, run), "lai.pairng=pooled")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: command line: unknown key 'lai.pairng' (did you mean 'lai.score.pairing'"), lines
    assert "[lai-train" not in p.stdout and "[ERROR]" not in p.stdout + p.stderr
    p = launch("--dry-run", CONFIG, *overrides(small, run))
    assert p.returncode == 0, p.stderr
    assert "launch: 2 CPU rank(s)" in p.stdout and "x 2 rank(s)" in p.stdout
    assert "dry run: nothing was started" in p.stdout and not run.exists()

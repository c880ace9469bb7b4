"""What every part uses: sizes, the trainer's LAI modes, the run config, logging, teardown."""
from __future__ import annotations

import gc
import os
import time

from benchmarks.lib.paths import ROOT

# bf16 dense peak per device for MFU (vendor datasheets); measured matmul ceilings are lower
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "cpu": 0.0}
# the headroom part's rows besides none and oracle (benchmarks.headroom.variants)
HEADROOM_VARIANTS = ["lai-filter", "mixing"]
SIZES = {
    "gpu": {"vocab": 50257, "seq_len": 1024, "model": ("gpt2", 12, 768, 12), "precision": "bf16",
            "steps": 20, "small_steps": 15, "log_every": 5, "small_batch": 8, "max_batch": 64,
            "bare_steps": 20, "fidelity_batches": 2, "fidelity_batch": 16, "sketch_dims": [1 << 16, 1 << 18, 1 << 20],
            "headroom": {"size": "gpu", "scenario": "spam", "variants": HEADROOM_VARIANTS,
                         "steps": 500, "jobs": 4, "scale": {"spam_entities": 1000,
                                                            "spam_clean_docs": 13_000,
                                                            "spam_docs": 53_000}}},
    "dry": {"vocab": 512, "seq_len": 64, "model": ("gpt2", 2, 64, 2), "precision": "fp32",
            "steps": 6, "small_steps": 6, "log_every": 2, "small_batch": 4, "max_batch": 8,
            "bare_steps": 4, "fidelity_batches": 2, "fidelity_batch": 4, "sketch_dims": [1 << 12, 1 << 16],
            "headroom": {"size": "cpu", "scenario": "spam", "variants": HEADROOM_VARIANTS,
                         "steps": 12, "jobs": 2, "scale": {"spam_entities": 12,
                                                           "spam_clean_docs": 100,
                                                           "spam_docs": 300}}},
}
MODES = {"off": ["lai.enabled=false", "lai.filter.kind=none"],
         "sketch": ["lai.enabled=true", "lai.filter.kind=lai", "lai.score.method=sketch"],
         "exact": ["lai.enabled=true", "lai.filter.kind=lai", "lai.score.method=exact"],
         "sketch-blocks": ["lai.enabled=true", "lai.filter.kind=lai", "lai.score.method=sketch",
                           "lai.score.layers=blocks"]}
for _m in ("off", "sketch", "sketch-blocks"):
    MODES[f"{_m}-compiled"] = MODES[_m] + ["model.compile=true"]
for _m in ("off", "sketch"):        # train.backend=fsdp2; on one rank ZeRO 2's layout is the
    MODES[f"{_m}-fsdp2"] = MODES[_m] + ["train.backend=fsdp2", "train.zero_stage=2"]  # nearest
# (mode, micro-batch: "big" = the probed size, "small" = SIZES' small_batch, or a number);
# the default fits the whole check in one 10-minute call on one H100 (estimate; bare: add
# bare:big, the fsdp2 rows: off-fsdp2:big,sketch-fsdp2:big)
PLAN = "ref:big,off:big,sketch:big,off-compiled:big,sketch-compiled:big"


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_tflops(res) -> float:
    name = res.get("env", {}).get("device", "cpu")
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)


def run_config(args, size, batch: int, steps: int) -> list[str]:
    family, n_layer, hidden, n_head = size["model"]
    return [str(ROOT / "configs" / "tiny_cpu.yaml"),
            f"data.sources=[{{path: '{args.work / ('stdlib-v' + str(size['vocab']))}', weight: 1.0}}]",
            f"data.seq_len={size['seq_len']}", f"model.family={family}",
            f"model.n_layer={n_layer}", f"model.hidden={hidden}", f"model.n_head={n_head}",
            "model.tie_word_embeddings=true", f"train.micro_batch={batch}", "train.grad_accum=1",
            "train.global_batch=0", f"train.steps={steps}", "train.zero_stage=1",
            f"train.precision={size['precision']}", "train.lr=6e-4", "train.min_lr=6e-5",
            "train.warmup_steps=5", "train.eval_every=0", "run.save_every=0", "run.resume=never",
            "run.keep_checkpoints=1", "lai.warmup_steps=0", "lai.score.reference=global",
            f"log.every={size['log_every']}", "log.histogram_every=0"]


def child_env() -> dict:
    """This environment for a child process that imports this checkout and starts process
    groups of its own (no rank variables or rendezvous port inherited: each picks a free one)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def teardown() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

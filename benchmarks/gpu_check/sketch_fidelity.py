"""Part 6: sketch (several sizes) and bf16 LAI values against exact fp32 on the trained model."""
from __future__ import annotations

import copy
import time

import numpy as np

from benchmarks.lib.stats import pearson, spearman
from benchmarks.gpu_check.shared import log, run_config


def fidelity_part(args, size, res) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data import PackedDataset
    from pipeline.lai import lai_values
    run = args.work / "runs" / f"sketch-b{res.get('overhead', {}).get('batch', size['max_batch'])}"
    src = run / "final" if (run / "final").is_dir() else None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if src is not None:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    else:                                     # no trained model (overhead part skipped or failed)
        from pipeline.config import load_config
        from pipeline.train.model import build_model
        argv = run_config(args, size, 2, 1)
        model = build_model(load_config(argv[0], argv[1:]).model, vocab_size=size["vocab"],
                            seq_len=size["seq_len"])
    model = model.to(dev).eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    data = PackedDataset([(args.work / f"stdlib-v{size['vocab']}", 1.0)], size["seq_len"],
                         split="val", seed=0)
    b = size["fidelity_batch"]
    rows = []
    for k in range(size["fidelity_batches"]):
        ids = torch.from_numpy(np.stack([data.sample(k * b + i) for i in range(b)]))[:, :-1]
        ids = ids.to(dev)
        t0 = time.perf_counter()
        exact = lai_values(model, ids, method="exact")          # (eager: no compile per size)
        t_exact = time.perf_counter() - t0
        row = {"batch": k, "exact_s": t_exact}
        for dim in size["sketch_dims"]:
            sk = lai_values(model, ids, method="sketch", sketch_dim=dim, compile=False)
            row[f"pearson_sketch_{dim}"] = pearson(sk.cpu().numpy(), exact.cpu().numpy())
            row[f"spearman_sketch_{dim}"] = spearman(sk.cpu().numpy(), exact.cpu().numpy())
        row["pearson_bf16_exact"] = pearson(lai_values(bf16, ids, method="exact").cpu().numpy(),
                                            exact.cpu().numpy())
        rows.append(row)
        log(f"fidelity batch {k}: " + ", ".join(f"{key} {v:.4f}" for key, v in row.items()
                                                if key.startswith("pearson")))
    res["fidelity"] = {"model": str(src or "untrained"), "batch": b, "rows": rows}

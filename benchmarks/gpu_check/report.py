"""The results: OUT/gpu_check.json, OUT/gpu_check.md, and with --doc the gpu section of
docs/RESULTS.md."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.lib.docs import update_section
from benchmarks.lib.paths import ROOT
from benchmarks.lib.tables import md_table


def section(res) -> str:
    e = res.get("env", {})
    L = ["## GPU check", "",
         f"- command: `{res['command']}` ({res['seconds'] / 60:.1f} min); date {res['date']}",
         f"- device: {e.get('device')} ({e.get('memory_gib', 0):.0f} GiB, driver {e.get('driver')}),"
         f" torch {e.get('torch')} CUDA {e.get('cuda')}, DeepSpeed {e.get('deepspeed')}, "
         f"transformers {e.get('transformers')}; {e.get('machine')}"]
    if "tests" in res:
        L.append(f"- CUDA tests (`pytest -m cuda`): {res['tests']['summary']}")
    for name, err in res.get("errors", {}).items():
        L.append(f"- part {name} failed: {err}")
    ov = res.get("overhead")
    if ov:
        L += ["", f"### Overhead (GPT-2 small, seq {res['size']['seq_len']}, "
              f"{res['size']['precision']}, 1 rank, ZeRO 1; MFU against {ov['peak_tflops']:.0f} "
              "TFLOP/s bf16 dense)", "",
              "step = the trainer's phase timers (data + forward + LAI + backward/step), median "
              "over log windows after the first; wall tok/s = tokens between the first and last "
              "log line over their wall time (everything the loop does); bare = a plain DeepSpeed "
              "loop on the same model, data and batch; ref = the nanoGPT-class reference loop "
              "(benchmarks/ref_loop.py: plain PyTorch, whole-model torch.compile, SDPA, fused "
              "AdamW, bf16 autocast, no DeepSpeed).", ""]
        tab = []
        for r in ov["rows"]:
            if "error" in r:
                tab.append([r["mode"], r["batch"]] + ["error"] * 8)
                continue
            tab.append([r["mode"], r["batch"], r["step_s"] * 1e3,
                        r.get("time_data_s", float("nan")) * 1e3, r.get("time_lai_s", 0) * 1e3,
                        r.get("lai_share", 0), r.get("tokens_per_s", float("nan")),
                        r["wall_tokens_per_s"], r["mfu"], r["peak_mem_gib"]])
        L += [md_table(["mode", "micro-batch", "step ms", "data ms", "LAI ms", "LAI share",
                        "tok/s (timers)", "tok/s (wall)", "MFU", "peak GiB"], tab, "{:.3f}"),
              ""]
        names = {"off": "pipeline with LAI off", "ref": "nanoGPT-class reference loop",
                 "bare": "bare DeepSpeed loop", "off-compiled": "pipeline with LAI off, compiled "
                 "blocks", "sketch": "pipeline with the LAI sketch",
                 "off-fsdp2": "pipeline with LAI off under fsdp2",
                 "sketch-fsdp2": "pipeline with the LAI sketch under fsdp2"}
        for key, v in ov.get("ratios", {}).items():
            what, _, batch = key.partition("@")
            if what.startswith("lai_share:"):
                L.append(f"- micro-batch {batch}: {what[10:]} LAI time / LAI-off step = {v:.3f}")
            else:
                a, b = what.split("/")
                L.append(f"- micro-batch {batch}: {names.get(a, a)} / {names.get(b, b)} = "
                         f"{v:.3f} (wall tok/s)")
        ref = [r for r in ov["rows"] if r["mode"] == "ref" and not r.get("compiled", True)]
        if ref:
            L.append("- the reference loop ran without torch.compile here (skipped on this device)")
    prof = res.get("lai_profile")
    if prof:
        keys = [k for k, v in prof.items() if isinstance(v, float) and not k.endswith("_gib")]
        L += ["", f"### Where the sketch's time goes (micro-batch {prof['batch']}, no grad, "
              f"attention {prof['attn']}, k1 x k2 = {prof['k1']} x {prof['k2']}, vocabulary chunk "
              f"{prof['chunk']} sequences; ms, median of 5; loss_*: forward + backward of the "
              "per-sequence loss, upcast F.cross_entropy vs chunked, and chunked folding the "
              "sketch's vocabulary side as LAI steps run it)", "",
              md_table(keys, [[prof[k] * (1 if k.endswith("compile_seconds") else 1e3)
                               for k in keys]],
                       "{:.2f}"), ""]
        if "loss_chunked_peak_gib" in prof:
            L.append(f"- loss forward + backward, memory above the logits: upcast "
                     f"F.cross_entropy {prof['loss_upcast_peak_gib']:.2f} GiB, chunked "
                     f"(pipeline/lai/kernels/xent.py) {prof['loss_chunked_peak_gib']:.2f} GiB, "
                     f"chunked folding the vocabulary side "
                     f"{prof['loss_chunked_folding_peak_gib']:.2f} GiB")
        if "compile_error" in prof:
            L.append(f"- torch.compile of the vocabulary side failed: {prof['compile_error']}")
        if "grouped_error" in prof:
            L.append(f"- the input side as one compiled call failed: {prof['grouped_error']}")
    fid = res.get("fidelity")
    if fid:
        keys = [k for k in fid["rows"][0] if k.startswith(("pearson", "spearman"))]
        rows = [[r["batch"], r["exact_s"], *[r[k] for k in keys]] for r in fid["rows"]]
        rows.append(["mean", float(np.mean([r["exact_s"] for r in fid["rows"]])),
                     *[float(np.mean([r[k] for r in fid["rows"]])) for k in keys]])
        L += ["", f"### Sketch vs exact (token_pair, the batch of {fid['batch']} as reference, "
              f"model: {Path(fid['model']).parent.name or fid['model']})", "",
              md_table(["batch", "exact s", *keys], rows, "{:.4f}"), ""]
    L += headroom_lines(res.get("headroom"))
    return "\n".join(L)


def headroom_lines(h) -> list[str]:
    """The headroom part's scenario: its sizes and one row per variant (1 seed)."""
    if not h:
        return []
    hd = h["headroom"]
    rows = [[r["variant"], r["final"], r["delta"], r["share"], r["excluded"], r["auroc"]]
            for r in h["rows"]]
    return ["", f"### Headroom scenario: {h['scenario']}, 1 seed (`{h['command']}`, "
            f"{h['seconds'] / 60:.1f} min)", "", h["line"], "", f"Data: {h['data']}.", "",
            f"oracle - none = {hd['oracle_minus_none']:+.4f} val loss (1 seed: no noise estimate; "
            "the CPU rows in the headroom sections have 3).", "",
            md_table(["variant", "final val loss", "minus none", "share of oracle gain",
                      "excluded", "AUROC"], rows, "{:.4f}"), ""]


def save(args, res) -> None:
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))


def write_report(args, res) -> int:
    text = section(res)
    (args.out / "gpu_check.md").write_text(text + "\n")
    if args.doc:
        update_section(ROOT / "docs" / "RESULTS.md", "gpu", text)
    return 0

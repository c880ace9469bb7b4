"""LAI fidelity benchmark: how well each LAI variant tracks the exact full-gradient inner product.

One command (deterministic seeds):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fidelity          # writes docs/FIDELITY.md

What it does, top to bottom:
1. prepares the default corpus (python stdlib sources) with the real data prep (`lai-prep`,
   sentencepiece, small vocabulary) unless --data names a prepared directory;
2. trains a tiny Llama with a plain single-process AdamW loop on packed train sequences of the
   corrupted copy of that corpus (benchmarks.corrupt: whole documents holding 20% of the train
   tokens corrupted), so that the model has learned the corruptions as it would in a real run
   (repeated text becomes low-loss);
3. at each checkpoint, scores fixed batches of held-back clean train sequences, 20% of which are
   freshly corrupted (repeat / shuffle / garbage, see benchmarks/lib/corruption.py), with every
   LAI variant (pairing x exact/sketch x with/without self x reference global/local/val) and the
   loss score, and compares them with `full_gradient_values` under the same reference: Pearson,
   Spearman, keep/drop agreement (value > 0), AUROC for flagging corrupted sequences (low value =
   flagged); plus the LM head alone (`layers=head`: its exact ghost term) against the same truth;
4. Adam-aware scoring (`lai.score.precondition=adam`) at each trained checkpoint: the AdamW state of the
   training loop gives P = 1/(sqrt(v_hat)+eps); LAI with and without its rank-1 factors, the
   per-layer ghost with P and with its rank-1 fit, and the head alone, against the exact
   preconditioned full-gradient inner product <grad l_z, P (.) grad l_j>;
5. sketch agreement with exact versus sketch size; cost per step of each method as a ratio to the
   plain forward+backward of the same batch;
6. writes docs/FIDELITY.md (tables, machine, command, date, computed recommendation), the raw
   numbers to docs/results/fidelity.json and a plot to docs/img/fidelity_sketch.png.

Reference "global" = the whole scored batch (all ranks' micro-batches); "local" = a quarter of it
(one of 4 ranks), each quarter scored against itself; "val" = a held-out clean batch.

Layout: data.py (the model, the training loop, the scored batches), scoring.py (every variant and
the truth on a batch; summaries), sweep.py (sketch size and cost per step), recommend.py (defaults
from the tables), report.py (docs/FIDELITY.md, the RESULTS section, the plot), __main__.py (the
command, top to bottom).
"""

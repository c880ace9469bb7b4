"""LAI's math: what a value is computed from, with no policy and no ranks (never imports
pipeline.lai.selection). The formulas are in docs/LAI.md.

  capture.py      layer-input hooks;  grads.py  losses, logit gradients;  xent.py  chunked CE
  pairings.py     one object per pairing (features, exact kernel, sketch), built on
                  features.py, exact.py, sketch.py
  precondition.py Adam-aware scoring (rank-1 factors of Adam's preconditioner)
  units.py        lai.unit=document: the document units of packed sequences (values, keep
                  and loss masks per document instead of per sequence)
  modelio.py      logits of an HF model, eval mode that restores itself
"""

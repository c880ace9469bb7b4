"""From LAI values to what the trainer trains on: settings, scoring against a reference,
normalisation, memory, the filter policy, weighting and source mixing (on pipeline.lai.kernels;
ranks talk through pipeline.comm).

  settings.py     LAISettings: every lai.* option, checked and resolved in one place
  scorer.py       LAIScorer: values against a local / global / val reference (pipeline.comm)
  normalize.py    values as z-scores or centred ranks within the global micro-batch
  memory.py       each document's remembered normalised score, across epochs
  policy.py       FilterPolicy: threshold, warmup, the per-step exclusion budget
  baselines.py    FILTERS: lai and the baselines (none, random, loss, full_gradient, oracle)
  selector.py     Selector: what the trainer calls per micro-batch (values, keep, value_norm)
  weighting.py    lai.weighting: bounded per-sequence loss weights from value_norm
  reference.py    full-gradient and ghost reference values (evaluation)
  mixing.py       SourceMixer: source weights from the mean normalised value or the loss
  api.py          lai_values
"""

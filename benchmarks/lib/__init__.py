"""What the benchmark suites share, one job per module:

paths (the repository root, the default output folder), corpus (the default prepared corpus),
runs (trainer runs as subprocesses), tb (a run's TensorBoard scalars), stats (correlations,
AUROC, paired differences and intervals), corruption (the corruption operators), timing
(round-robin timing, a training step with and without LAI), machine (where and when a number was
measured), tables (markdown tables), plots (paired val-loss curves), docs (rewriting a section of
docs/RESULTS.md).
"""

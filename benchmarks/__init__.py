"""The benchmark suites, each run from the repository root as `python -m benchmarks.<suite>`
(usage in each suite's docstring; results and the command that made them in docs/):

headroom (filters against no filter and the oracle, paired by seed), mixing (value-guided source
mixing), fidelity (LAI against the full-gradient inner product), overhead, backends, lai_cost,
loss_cost, select_cost (what LAI and its parts cost per step), prep_throughput,
loader_throughput, data_checks (data prep and loading), gpu_check (the prepared GPU check),
bare_loop and ref_loop (reference training loops), corrupt (a corrupted copy of a prepared
corpus). What they share lives in lib/.
"""

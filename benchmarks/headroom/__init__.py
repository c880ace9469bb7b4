"""Quality with headroom: scenarios in which a perfect filter measurably wins, and the share of that
win each filter recovers.

One command (seeds fixed; resumable: finished runs and their analyses are reused):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.headroom                   # the suite, CPU
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.headroom --variants all    # + the levers
    .venv/bin/python -m benchmarks.headroom --scenarios conflict --variants lai-global --seeds 0,1,2
    .venv/bin/python -m benchmarks.headroom --add 'lai-cap0.1=lai.enabled=true lai.filter.kind=lai
        lai.filter.max_exclude_frac=0.1'                            # a new variant: dotted overrides
    .venv/bin/python -m benchmarks.headroom --size gpu --jobs 1 --nproc 8        # a GPU node
    .venv/bin/python -m benchmarks.headroom --scenarios conflict --variants none,oracle \
        --seeds 0 --steps 20 --out /tmp/headroom --no-doc                       # a smoke run

Every run goes through the real trainer (`python -m pipeline.train`, DeepSpeed ZeRO 0; torchrun
over gloo when --nproc > 1). `lai-filter` is LAI's z-score filter (lai.filter.kind=lai) with everything
else as the trainer ships it (the shipped default, lai.filter.kind=none, trains exactly what `none`
trains); every other LAI variant changes one thing of it (see VARIANTS). A finished run is reused only if it ran with the same
trainer arguments.

Each scenario is a training mix of prepared sources (generated text and text CPython ships, through
the real `lai-prep`: one shared tokenizer, one prepared directory per source, so a packed sequence
comes from one source; in `inside` each directory packs a clean and a harmful document set) and a
validation set that stands for what the user wants:

  spam      repeated low-loss harm: facts about made-up countries (the clean data) mixed 2:3 with
            templated advertising pages, five templates repeated over and over: near-duplicates of
            each other, lower in loss than the facts (so per-sequence loss cannot flag them), that
            teach nothing the validation set asks for
  domain    domain targeting: the target (country facts) is 25% of the mix, the rest standard
            library code and the Python language reference; val = the target domain
  conflict  conflicting content: 25% of the documents state a consistent wrong value for every
            fact (the same myth each time), the rest the truth; val = the truth
  inside    harm inside every source: two declared sources, each 40% harmful documents (one-line
            spam ads / myths) among true facts, every document a sentence or two, so several are
            packed into each sequence (documents per sequence reported); val = held-out truth.
            Its per-document rows (lai.unit=document: a dropped document's tokens leave the
            loss, not its sequence): `oracle-doc` (every harmful document), `lai-doc` (the
            z-score filter on document values), `lai-doc-raw` (document value <= 0 dropped)
  universal the validation set is the mix: facts, code and the language reference, nothing
            harmful, val drawn from every source in its training proportion, each source's own
            val loss reported; no ceiling, oracle or headroom: the do-no-harm check

Reference rows: `none` (no filter); `ceiling` (the same steps on the clean / target source alone);
`oracle` (`lai.filter.kind=oracle`: in each global batch exactly the sequences of the harmful sources are
excluded, under the scenario's cap, which is >= their share, so it drops them all). Every filter runs
under that same cap (`lai.filter.max_exclude_frac`); random and loss-based exclusion, and `oracle@rate`,
at the exclusion rate `lai-filter` measured. Selection at equal trained tokens (spam, conflict):
`oracle-refill` (2 x the global batch drawn per step, the least harmful half trained:
`lai.select.kind=oversample` ranking by the oracle's score), `loss-refill` (the lowest-loss half),
`select-lai` (the highest-valued half), beside soft reweighting (`weight-lai`: lai.weighting.kind=sigmoid,
nothing dropped); random with refill is `none`. Mixer rows: `mixing` (lai.mixing), `mixing-avg`
(drawing with the time-averaged weights), `bandit` (lai.mixing.kind=loss_bandit, no LAI) and
`static-tuned` (the best of 5-8 static mixtures on the first seed, then run on every seed; the
grid is listed in the scenario's section). A scenario counts when oracle minus none
is at least 4x the standard deviation over seeds of that paired difference. The global batch
(`train.global_batch`) is the size's on any number of ranks.

Metrics per scenario and variant, from each run's TensorBoard (`val/loss`) and ledger: final val
loss (mean +- std over seeds); the paired difference to `none` of the same seed (same init, same
data order) with its 95% t-interval; the share of the oracle's gain recovered,
(none - method) / (none - oracle); steps to reach none's final val loss (and their share of the
run's steps); compute (mean run CPU time / none's: the runs are single-threaded, so CPU
seconds measure their cost even on a shared machine); tokens trained (of the
kept sequences); per-source val loss (`val/<source>/loss`); AUROC of the filter's score
for the harmful sequences (after the LAI warmup); the excluded fraction of each source.
Writes docs/results/headroom-<size>.json, docs/img/headroom_<scenario>.png and the `headroom-summary`
(top) and `headroom` sections of docs/RESULTS.md.

Layout: scenarios.py (sizes, scenarios and their documents, from corpora.py), variants.py (the
rows: dotted overrides per variant), runs.py (data prep, the base config, running every
(scenario, variant, seed) through the trainer), analysis.py (one run -> metrics; runs -> rows and
headroom), report.py (tables, plots, docs/RESULTS.md), __main__.py (the command).
"""

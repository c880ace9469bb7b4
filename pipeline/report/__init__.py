"""The report (`lai-report RUN_DIR`, `python -m pipeline.report`): a run's valuation ledger turned
into a per-source / per-document data valuation.

    stats.py       which documents each sequence covers; token-weighted group statistics
    valuation.py   build_report: ledger + data spec + tokenizer -> RUN/report/*
    render.py      report.md, valuation.png, the summary line
    keeplist.py    keep_drop.csv (what lai-prep --exclude reads)
    curves.py      the val loss curves the run wrote to TensorBoard
    cli.py         the command
"""

"""`lai-report RUN_DIR`: turn a run's valuation ledger into a per-source / per-document data
valuation under RUN_DIR/report/ (see pipeline.report.valuation), with a keep/drop list that
`lai-prep --exclude` applies."""
from __future__ import annotations

import argparse

from pipeline.errors import UserError, cli_main
from pipeline.report.render import summary
from pipeline.report.valuation import build_report


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lai-report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="output directory of lai-train")
    p.add_argument("--top", type=int, default=10, help="documents listed at each end (10)")
    p.add_argument("--min-tokens", type=int, default=16,
                   help="rank only documents with at least this many trained tokens (16)")
    p.add_argument("--drop-frac", type=float, default=0.1,
                   help="keep_drop.csv marks this least valuable fraction of the ranked "
                        "documents drop, those below their steps' average (0.1)")
    p.add_argument("--min-measured", type=int, default=2,
                   help="only documents measured at least this many times can be marked drop "
                        "(2: a single measurement is a noisy verdict)")
    args = p.parse_args(argv)
    if args.top < 0 or args.min_tokens < 0:
        raise UserError("--top and --min-tokens must be >= 0")
    if args.min_measured < 1:
        raise UserError(f"--min-measured: must be >= 1, got {args.min_measured}")
    if not 0 <= args.drop_frac <= 1:
        raise UserError(f"--drop-frac: must be in [0, 1], got {args.drop_frac}")
    print(summary(build_report(args.run_dir, top=args.top, min_tokens=args.min_tokens,
                               drop_frac=args.drop_frac, min_measured=args.min_measured)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

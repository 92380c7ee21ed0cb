"""``hbm effects RUN TERM`` and ``hbm contrast RUN FACTOR``: what a fit says about one predictor
(:mod:`hbm.pipeline.effects`). Each reads the run, checks what it was asked before any work, prints a
table and writes its files into a new directory."""
from __future__ import annotations

import sys


def add_parsers(sub) -> None:
    """The two subcommands, on ``hbm``'s subparsers."""
    e = sub.add_parser("effects", help="the expected response over one predictor, the others held "
                                       "(group-level effects at zero)")
    e.add_argument("run_dir")
    e.add_argument("term", help="a column of the formula (price for log(price)), numeric or a factor")
    e.add_argument("--by", metavar="FACTOR", help="one line per level of this factor")
    e.add_argument("--at", action="append", default=[], metavar="COLUMN=VALUE",
                   help="hold a predictor at this value (default: numeric at its mean, a factor at its "
                        "reference level)")
    e.add_argument("--points", type=int, default=50, help="grid points of a numeric TERM (default 50)")
    e.add_argument("--out", metavar="DIR",
                   help="a new directory for effects.csv and effects.png (default: RUN-effects-TERM beside RUN)")

    c = sub.add_parser("contrast", help="posterior differences of the expected response between the levels "
                                        "of a factor")
    c.add_argument("run_dir")
    c.add_argument("factor", help="a factor of the formula (a text column, factor(x)) or a grouping factor")
    c.add_argument("--pairs", action="store_true", help="all pairs of levels (default: each against the reference)")
    c.add_argument("--at", action="append", default=[], metavar="COLUMN=VALUE",
                   help="hold a predictor at this value")
    c.add_argument("--out", metavar="DIR",
                   help="a new directory for contrast.csv (default: RUN-contrast-FACTOR beside RUN)")


def cmd_effects(args) -> int:
    from hbm.pipeline.effects import (as_predictor, by_term, conditional_effects, format_effects, output_dir,
                                      parse_at, resolve_term, write_effects)
    pred = as_predictor(args.run_dir)
    term = resolve_term(pred, args.term)
    by = by_term(pred, args.by, term) if args.by else None
    at = parse_at(pred, args.at)
    name = term.column + (f"-by-{by.column}" if by else "")
    out = output_dir(args.run_dir, "effects", name, args.out)     # checked before the work
    eff = conditional_effects(pred, args.term, by=args.by, at=at, points=args.points)
    print(format_effects(eff))
    write_effects(eff, out)
    print(f"written to {out} (effects.csv, effects.png)", file=sys.stderr)
    return 0


def cmd_contrast(args) -> int:
    from hbm.pipeline.effects import (as_predictor, contrasts, factor_term, format_contrasts, output_dir,
                                      parse_at, write_contrasts)
    pred = as_predictor(args.run_dir)
    factor = factor_term(pred, args.factor, args.pairs)
    at = parse_at(pred, args.at)
    out = output_dir(args.run_dir, "contrast", factor.column, args.out)
    con = contrasts(pred, args.factor, pairs=args.pairs, at=at)
    print(format_contrasts(con))
    write_contrasts(con, out)
    print(f"written to {out} (contrast.csv)", file=sys.stderr)
    return 0

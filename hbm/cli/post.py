"""``hbm loo`` and ``hbm ppc``: checks of finished fits, read from their run directories.

    hbm loo RUN [RUN ...] [--out DIR]           # PSIS-LOO per run; several runs: ArviZ's comparison
    hbm ppc RUN [--group COLUMN] [--out FILE]   # the posterior predictive check picture

Each registers its parser with :func:`add_parsers`; ``main`` runs the function the parser names.
"""
from __future__ import annotations

from pathlib import Path

from hbm.errors import HbmError


def add_parsers(sub) -> None:
    """The ``loo`` and ``ppc`` subcommands, on ``sub`` (argparse's subparsers of ``hbm``)."""
    lo = sub.add_parser("loo", help="PSIS leave-one-out cross-validation of runs, and their comparison")
    lo.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: fitted to the same data)")
    lo.add_argument("--out", metavar="DIR",
                    help="a new directory for loo.csv (default with several runs: loo-A-vs-B beside the first)")
    lo.set_defaults(command_fn=cmd_loo)
    pp = sub.add_parser("ppc", help="draw the posterior predictive check of a run")
    pp.add_argument("run_dir")
    pp.add_argument("--group", metavar="COLUMN", help="one panel per level of this grouping factor")
    pp.add_argument("--out", metavar="FILE", help="the PNG to write (default: ppc-RUN[-by-COLUMN].png beside RUN)")
    pp.set_defaults(command_fn=cmd_ppc)


def fit_notes(result) -> list[str]:
    """What ``hbm fit`` says after writing a run about a group it left out unasked (fit.json's ``outputs``)."""
    ll = result.outputs_plan()["log_likelihood"]
    if ll["written"] or ll["setting"] == "no":
        return []
    return [f"note: posterior.nc has no log_likelihood group ({ll['reason']}); hbm loo needs it"]


def cmd_loo(args) -> int:
    from hbm.pipeline.loo import format_loo, loo_runs, output_dir, write_loo
    out = output_dir(args.runs, args.out)      # checked before the work
    report = loo_runs(args.runs)
    print(format_loo(report))
    if out is not None:
        write_loo(report, out)
        print(f"table written to {out / 'loo.csv'}")
    return 0


def cmd_ppc(args) -> int:
    from hbm.io.rundir import check_writable, load_run, write_new_file
    from hbm.results.ppc import plot_ppc
    rec = load_run(args.run_dir)
    out = Path(args.out) if args.out else _default_png(rec.path, args.group)
    if out.suffix.lower() != ".png":
        raise HbmError(f"ppc draws a PNG; '{out.name}' is not named .png", where="--out",
                       hint=f"e.g. --out {out.with_suffix('.png').name}")
    _outside_runs(out)
    check_writable(out, parent_exists=True)
    idata = rec.idata()
    if "posterior_predictive" not in idata.groups():
        raise HbmError(f"run {rec.path} has no posterior_predictive group, which ppc draws",
                       where=str(rec.path / "posterior.nc"),
                       hint="runs written by an hbm before the group existed lack it: fit the model again")
    drawn = {}
    write_new_file(out, lambda p: drawn.update(plot_ppc(idata, p, group=args.group)))
    shown = (f", {len(drawn['levels'])} levels of {args.group}" +
             (f" ({drawn['left_out']:,} more left out)" if drawn["left_out"] else "")) if args.group else ""
    print(f"posterior predictive check ({drawn['draws']} draws, {drawn['rows']:,} rows{shown}) written to {out}")
    return 0


def _default_png(run: Path, group: str | None) -> Path:
    """``ppc-<run>[-by-<group>].png`` beside the run (``-2``, ``-3``, ... when taken)."""
    import re
    tag = "" if group is None else "-by-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", group).strip("._") or "group")
    stem = run.resolve().parent / f"ppc-{run.resolve().name}{tag}"
    p, n = stem.with_name(stem.name + ".png"), 1
    while p.exists() or p.is_symlink():
        n += 1
        p = stem.with_name(f"{stem.name}-{n}.png")
    return p


def _outside_runs(out: Path) -> None:
    """A picture never goes into a finished run directory."""
    run = next((q for q in out.absolute().parents if all((q / f).is_file() for f in ("fit.json", "posterior.nc"))),
               None)
    if run is not None:
        raise HbmError(f"--out {out} is inside the run directory {run}; hbm never changes a finished run",
                       where="--out", hint="choose a path outside it, or leave out --out")

"""The ``deepcmb figures`` subcommand (registered by :mod:`deepcmb.cli`)."""

from .stage import FORMATS, SCHEMA


def add_parser(subparsers):
    """Add the ``figures`` subcommand to the ``deepcmb`` subparsers; its ``func`` takes the parsed args."""
    p = subparsers.add_parser("figures", help="draw every figure from an evaluation report (and chains)",
                              description="Draw the paper figures from report.h5 of `deepcmb evaluate` (and "
                                          "chains.h5 of `deepcmb params`) alone, into a folder of PNG and PDF "
                                          "files with an index.json of captions.")
    p.add_argument("--report", required=True, help="report.h5 of `deepcmb evaluate`")
    p.add_argument("--chains", default=None, help="chains.h5 of `deepcmb params` (adds the posterior figures)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", default=None, help=f"comma-separated file formats: {', '.join(FORMATS)} "
                                                   f"(default {','.join(SCHEMA['formats'].default)})")
    p.add_argument("--overwrite", action="store_true", help="replace a folder holding earlier figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args):
    from .stage import run_figures

    formats = None if args.formats is None else [f.strip() for f in args.formats.split(",") if f.strip()]
    paths = run_figures(args.report, args.out, chains=args.chains, formats=formats, overwrite=args.overwrite,
                        progress=not args.quiet)
    print(f"wrote {len(paths)} files to {args.out} (captions in {args.out}/index.json)")

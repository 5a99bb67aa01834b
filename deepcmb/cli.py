"""The ``deepcmb`` command line: one subcommand per stage.

Errors a user can cause print one line ``deepcmb <stage>: error: <message>`` and exit with code 2,
without a traceback.
"""

import argparse
import os
import sys

from .errors import DeepCMBError


def _add_simulate(sub):
    p = sub.add_parser("simulate", help="simulate lensed CMB maps with their truth into HDF5",
                       description="Simulate lensed CMB maps (flat-sky exact NUFFT lensing, or curved-sky "
                                   "lenspyx patches) for the cosmologies of a config, written to HDF5.")
    p.add_argument("--config", required=True, help="YAML config (see sims/quick.yaml)")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="local worker processes (default: all cores)")
    p.add_argument("--scheduler", default=None, help="Dask distributed scheduler address (tcp://host:port)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args):
    from .config import load_yaml
    from .simulate import run_simulate

    out = run_simulate(load_yaml(args.config), args.out, workers=args.workers, scheduler=args.scheduler,
                       overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")


def build_parser():
    """The argument parser of the ``deepcmb`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="deepcmb", description="CMB lensing reconstruction with deep learning.")
    parser.add_argument("--version", action="version", version=f"deepcmb {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_simulate(sub)
    return parser


def main(argv=None):
    """Entry point of the ``deepcmb`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # CAMB's Fortran runtime buffers its chatter when stdout is a pipe and flushes it at exit, past
    # the point where deepcmb silences it; unbuffered, it is silenced while CAMB runs.
    os.environ.setdefault("GFORTRAN_UNBUFFERED_PRECONNECTED", "y")
    try:
        args.func(args)
    except DeepCMBError as exc:
        print(f"deepcmb {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepcmb {args.stage}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``deepcmb params`` subcommand (registered by :mod:`deepcmb.cli`)."""

from ..errors import ConfigError


def add_parser(subparsers):
    """Add the ``params`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "params", help="fit Alens and cosmological parameters to the reconstructed lensing spectra",
        description="Calibrate each method's transfer and noise (and their dependence on the sampled parameters) "
                    "on the maps of calibration cosmologies of an evaluation report, then sample the posterior of "
                    "Alens and CAMB parameters (emcee) for the held-out test cosmologies. "
                    "Reads the params: section of the config; writes OUT/chains.h5 and OUT/summary.json.")
    p.add_argument("--config", required=True, help="YAML config with a params: section (see evaluate/quick.yaml)")
    p.add_argument("--report", required=True, help="report.h5 of `deepcmb evaluate`")
    p.add_argument("--out", required=True, help="output folder (chains.h5, summary.json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in the folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args):
    from ..config import load_yaml
    from .stage import run_params

    section = load_yaml(args.config).get("params")
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{args.config}: params: expected a mapping, got {section!r}")
    out = run_params(section, args.report, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out / 'chains.h5'} and {out / 'summary.json'}")

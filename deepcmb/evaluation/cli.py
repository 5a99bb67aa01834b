"""The ``deepcmb evaluate`` subcommand (registered by :mod:`deepcmb.cli` through :func:`add_parser`)."""

from ..errors import ConfigError


def add_parser(subparsers):
    """Add ``evaluate`` to the subcommands of the ``deepcmb`` parser."""
    p = subparsers.add_parser(
        "evaluate", help="compare reconstructions with the simulation truth (spectra, rho, noise, S/N)",
        description="Measure binned spectra of reconstructed and true kappa (and unlensed E) for every map, and "
                    "the cross-correlation coefficient, effective noise, transfer function and S/N per noise level "
                    "and cosmology, with analytic QE N0 and iterative-limit curves. Writes OUT/report.h5 and "
                    "OUT/summary.json.")
    p.add_argument("--config", required=True,
                   help="YAML config; its evaluate: section is used (see evaluate/quick.yaml)")
    p.add_argument("--sims", required=True, help="simulation file of `deepcmb simulate` (the truth)")
    p.add_argument("--rec", required=True, action="append", metavar="LABEL=FILE",
                   help="a reconstruction of --sims under a label (letters, digits, _), e.g. nn=rec_nn.h5; repeat "
                        "for several methods")
    p.add_argument("--out", required=True, help="output folder (report.h5, summary.json)")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def parse_recs(items):
    """``['nn=a.h5', 'qe=b.h5']`` -> ``{'nn': 'a.h5', 'qe': 'b.h5'}`` (labels checked by the stage)."""
    recs = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"--rec {item}: expected LABEL=FILE, e.g. nn=rec_nn.h5")
        if label in recs:
            raise ConfigError(f"--rec {item}: label {label!r} given twice")
        recs[label] = path
    return recs


def _run(args):
    from ..config import load_yaml
    from .stage import run_evaluate

    config = load_yaml(args.config)
    if "evaluate" not in config:
        raise ConfigError(f"{args.config}: no 'evaluate:' section")
    out = run_evaluate(config["evaluate"], args.sims, parse_recs(args.rec), args.out, overwrite=args.overwrite,
                       progress=not args.quiet)
    print(f"wrote {out}/report.h5 and {out}/summary.json")

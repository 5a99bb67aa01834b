"""The ``deepcmb`` command line: one subcommand per stage.

Errors a user can cause print one line ``deepcmb <stage>: error: <message>`` and exit with code 2,
without a traceback.
"""

import argparse
import importlib
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


def _quiet_tensorflow():
    # TensorFlow's C++ start-up chatter (CUDA probes, CPU features) would bury the stage's own output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_train(sub):
    p = sub.add_parser("train", help="train the ResUNet on a simulation file",
                       description="Train the ResUNet (Keras 3; backend from KERAS_BACKEND) on the maps of a "
                                   "simulation file. Re-running the same command on an interrupted run folder "
                                   "resumes from its last checkpoint.")
    p.add_argument("--config", required=True, help="YAML config (see train/quick.yaml)")
    p.add_argument("--data", required=True, help="simulation file of `deepcmb simulate`")
    p.add_argument("--out", required=True, help="run folder (model.keras, checkpoints, history.csv, ...)")
    p.add_argument("--qe", default=None, help="QE reconstruction of --data (for a model with a kappa_qe input)")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder holding another or a finished run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args):
    _quiet_tensorflow()
    from .config import load_yaml
    from .nn.train import run_train

    out = run_train(load_yaml(args.config), args.data, args.out, qe=args.qe, overwrite=args.overwrite,
                    progress=not args.quiet)
    print(f"wrote {out}/model.keras")


def _add_reconstruct(sub):
    p = sub.add_parser("reconstruct", help="reconstruct kappa from the observed maps of a simulation file",
                       description="Reconstruct the lensing convergence of every map of a simulation file, with a "
                                   "trained ResUNet (--method nn; also the unlensed E map for a network with that "
                                   "head) or a quadratic estimator (--method qe).")
    p.add_argument("--method", required=True, choices=["nn", "qe"],
                   help="nn: a trained ResUNet; qe: a flat-sky quadratic estimator")
    p.add_argument("--data", required=True, help="simulation file of `deepcmb simulate`")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    nn = p.add_argument_group("nn options")
    nn.add_argument("--model", default=None,
                    help="run folder of `deepcmb train` or a .keras file (default: the shipped pretrained model)")
    nn.add_argument("--batch-size", type=int, default=32, help="maps per forward pass / QE batch (default 32)")
    nn.add_argument("--split", default="all", choices=["all", "train", "validation", "test"],
                    help="reconstruct one split of the model's training file (default: all maps)")
    nn.add_argument("--qe", default=None, help="QE reconstruction of --data (for a model with a kappa_qe input)")
    nn.add_argument("--any-shape", action="store_true",
                    help="apply the (fully convolutional) network to maps of another size than it was trained on, "
                         "at the same pixel size")
    nn.add_argument("--symmetrize", action="store_true",
                    help="average the prediction over the 8 rotations and reflections of the grid (8 network passes)")
    qe = p.add_argument_group("qe options")
    qe.add_argument("--estimator", default="EB", help="TT, TE, EE, EB, TB, MV or MV_POL (default EB)")
    qe.add_argument("--lmin", type=float, default=300.0, help="lowest CMB multipole used (default 300)")
    qe.add_argument("--lmax", type=float, default=3500.0, help="highest CMB multipole used (default 3500)")
    qe.add_argument("--Lmin", type=float, default=20.0, help="lowest lensing multipole kept (default 20)")
    qe.add_argument("--Lmax", type=float, default=3500.0, help="highest lensing multipole kept (default 3500)")
    qe.add_argument("--wiener", action="store_true", help="write the Wiener-filtered kappa C/(C+N0) kappa_hat")
    qe.add_argument("--apodize-arcmin", type=float, default=None,
                    help="cosine taper width (default: 0 for periodic maps, 60 for curved-sky patches)")
    qe.add_argument("--mean-field-maps", type=int, default=64,
                    help="maps per mean-field estimate, non-periodic patches only (default 64)")
    qe.add_argument("--precision", default="single", choices=["single", "double"],
                    help="arithmetic of the estimate (default single: the maps are float32)")
    p.set_defaults(func=_run_reconstruct)


def _run_reconstruct(args):
    if args.method == "qe":
        from .errors import ConfigError
        from .qe.stage import run_reconstruct_qe

        if args.model is not None or args.qe is not None or args.split != "all" or args.any_shape or args.symmetrize:
            raise ConfigError("--model, --qe, --split, --any-shape and --symmetrize apply to --method nn only")
        out = run_reconstruct_qe(args.data, args.out, estimator=args.estimator, lmin=args.lmin, lmax=args.lmax,
                                 Lmin=args.Lmin, Lmax=args.Lmax, wiener=args.wiener,
                                 apodize_arcmin=args.apodize_arcmin, mean_field_maps=args.mean_field_maps,
                                 batch_size=args.batch_size, precision=args.precision, overwrite=args.overwrite,
                                 progress=not args.quiet)
    else:
        _quiet_tensorflow()
        from .nn.reconstruct import run_reconstruct_nn

        out = run_reconstruct_nn(args.model, args.data, args.out, batch_size=args.batch_size, split=args.split,
                                 qe=args.qe, any_shape=args.any_shape, symmetrize=args.symmetrize,
                                 overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")


def _add_run(sub):
    p = sub.add_parser("run", help="run every stage of a preset (simulate -> ... -> figures)",
                       description="Run simulate -> train -> reconstruct (nn and qe) -> evaluate -> params -> "
                                   "figures for a preset (evaluate/PRESET.yaml and the presets it names), one "
                                   "line per stage. Stages finished under the same config are re-used; an "
                                   "interrupted run resumes.")
    p.add_argument("--preset", default="quick", help="preset name (quick, paper) or path to evaluate/<name>.yaml")
    p.add_argument("--root", default=None,
                   help="folder holding sims/, train/, evaluate/ (default: the current folder, else the checkout)")
    p.add_argument("--out", default=None, help="run folder (default ROOT/data/out/run_PRESET)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="local worker processes for the simulations (default: all cores)")
    p.add_argument("--verbose", action="store_true", help="also show each stage's own progress bars")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args):
    _quiet_tensorflow()
    from .pipeline import run_pipeline

    run_pipeline(args.preset, out=args.out, root=args.root, workers=args.workers, verbose=args.verbose)


def build_parser():
    """The argument parser of the ``deepcmb`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="deepcmb", description="CMB lensing reconstruction with deep learning.")
    parser.add_argument("--version", action="version", version=f"deepcmb {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_simulate(sub)
    _add_train(sub)
    _add_reconstruct(sub)
    for module in ("evaluation", "params", "figures"):
        importlib.import_module(f".{module}.cli", __package__).add_parser(sub)
    _add_run(sub)
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

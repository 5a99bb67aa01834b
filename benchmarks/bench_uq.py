"""Cost of ``--uncertainty``: the reconstruction with and without the per-map posterior, in the same run.

Run as::

    python benchmarks/bench_uq.py OUT [--maps 1000] [--repeat 3]

Simulates ``--maps`` quick-preset maps (64 x 64) and a calibration set, calibrates the MV_POL QE and the
shipped quick network, then times ``deepcmb reconstruct`` of the maps with and without
``--uncertainty`` for each, alternating the two ``--repeat`` times, and prints the best wall time of
each and their ratio (the issue's budget: at most 2).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"qe": ["--method", "qe", "--estimator", "MV_POL"], "nn": ["--method", "nn", "--model", "quick"]}


def deepcmb(*args):
    subprocess.run([sys.executable, "-m", "deepcmb.cli", *args, "--quiet"], check=True, capture_output=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--maps", type=int, default=1000, help="maps reconstructed")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each variant")
    args = parser.parse_args(argv)
    o = args.out
    o.mkdir(parents=True, exist_ok=True)
    for name, n in (("sims", args.maps), ("cal", 320)):
        if not (o / f"{name}.h5").exists():
            deepcmb("simulate", "--config", str(ROOT / "sims/quick_calib.yaml"), "--set", f"n_maps={n}",
                    "--set", f"seed={11 if name == 'sims' else 12}", "--out", str(o / f"{name}.h5"))
    print(f"{'method':8s} {'plain s':>9s} {'--uncertainty s':>16s} {'ratio':>6s}   ({args.maps} maps, best of "
          f"{args.repeat})")
    for method, flags in METHODS.items():
        if not (o / f"calib_{method}.h5").exists():
            deepcmb("reconstruct", *flags, "--sims", str(o / "cal.h5"), "--out", str(o / f"cal_{method}.h5"),
                    "--overwrite")
            deepcmb("calibrate", "--sims", str(o / "cal.h5"), "--rec", str(o / f"cal_{method}.h5"), "--out",
                    str(o / f"calib_{method}.h5"), "--overwrite")
        best = {"plain": float("inf"), "uq": float("inf")}
        for _ in range(args.repeat):
            for variant, extra in (("plain", []), ("uq", ["--uncertainty", str(o / f"calib_{method}.h5")])):
                t0 = time.perf_counter()
                deepcmb("reconstruct", *flags, "--sims", str(o / "sims.h5"), "--out", str(o / f"{method}_{variant}.h5"),
                        "--overwrite", *extra)
                best[variant] = min(best[variant], time.perf_counter() - t0)
        print(f"{method:8s} {best['plain']:9.2f} {best['uq']:16.2f} {best['uq'] / best['plain']:6.2f}")


if __name__ == "__main__":
    main()

"""Cost of ``--uncertainty``: the reconstruction with and without the per-map posterior, in the same run.

Run as::

    python benchmarks/bench_uq.py OUT [--maps 1000] [--repeat 3]

Simulates ``--maps`` quick-preset maps (64 x 64) and a calibration set, calibrates the MV_POL QE and the
shipped quick network; and as many masked maps (sims/masked_calib.yaml: a mask and a noise map each) with
their calibration set for the shipped survey network (symmetrized), whose posterior follows the local
depth (one smoothing of mask x ivar_p per map). Then times ``deepcmb reconstruct`` of the maps with and
without ``--uncertainty`` for each, alternating the two ``--repeat`` times, and prints the best wall time
of each and their ratio (the issue's budget: at most 2).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"qe": ["--method", "qe", "--estimator", "MV_POL"], "nn": ["--method", "nn", "--model", "quick"],
           "survey": ["--method", "nn", "--model", "survey", "--symmetrize"]}
PRESET = {"qe": "sims/quick_calib.yaml", "nn": "sims/quick_calib.yaml", "survey": "sims/masked_calib.yaml"}
"""The maps each method is timed on (another seed than the preset's)."""


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
    for preset in set(PRESET.values()):
        for name, n in (("sims", args.maps), ("cal", 320)):
            out = o / f"{Path(preset).stem}_{name}.h5"
            if not out.exists():
                deepcmb("simulate", "--config", str(ROOT / preset), "--set", f"n_maps={n}",
                        "--set", f"seed={11 if name == 'sims' else 12}", "--out", str(out))
    print(f"{'method':8s} {'plain s':>9s} {'--uncertainty s':>16s} {'ratio':>6s}   ({args.maps} maps, best of "
          f"{args.repeat})")
    for method, flags in METHODS.items():
        sims, cal = (o / f"{Path(PRESET[method]).stem}_{name}.h5" for name in ("sims", "cal"))
        if not (o / f"calib_{method}.h5").exists():
            deepcmb("reconstruct", *flags, "--sims", str(cal), "--out", str(o / f"cal_{method}.h5"), "--overwrite")
            deepcmb("calibrate", "--sims", str(cal), "--rec", str(o / f"cal_{method}.h5"), "--out",
                    str(o / f"calib_{method}.h5"), "--overwrite")
        best = {"plain": float("inf"), "uq": float("inf")}
        for _ in range(args.repeat):
            for variant, extra in (("plain", []), ("uq", ["--uncertainty", str(o / f"calib_{method}.h5")])):
                t0 = time.perf_counter()
                deepcmb("reconstruct", *flags, "--sims", str(sims), "--out", str(o / f"{method}_{variant}.h5"),
                        "--overwrite", *extra)
                best[variant] = min(best[variant], time.perf_counter() - t0)
        print(f"{method:8s} {best['plain']:9.2f} {best['uq']:16.2f} {best['uq'] / best['plain']:6.2f}")


if __name__ == "__main__":
    main()

"""The input score of the shipped bench network at its two training noise levels and between them: one
reference pooled over the calibration maps of both levels against one reference per level.

Run as::

    python benchmarks/ood_levels.py OUT [--maps 1000] [--rst docs/results/ood_levels.rst]

Simulates the 1000 calibration maps of the shipped bench network (``sims/bench_calib.yaml``: 500 at each of
1 and 5 uK-arcmin), ``--maps`` held-out test maps (``sims/bench_test.yaml``, half at each level) and
``--maps`` maps at the unseen 2 uK-arcmin (``sims/bench_noise.yaml``), and reconstructs the test sets with
the network as its calibration was made (``--symmetrize``) and ``--uncertainty`` its shipped calibration
(``data/pretrained/bench/calibration.h5``, one reference per level). The pooled reference is that of
calibration files of format version 1 (the bench calibration before the per-level format): the log band
powers of all 1000 calibration maps, their 0.99 quantile as the threshold. Prints and, with ``--rst``,
writes one row per set and noise level: the pixel coverage of the posterior at 1 and 2 sigma (errors: the
scatter over maps), and the fraction of maps flagged (score above the threshold) with the pooled
reference and with the per-level one, with the median per-level score (``ood_score``). Stages whose
output exists in OUT are re-used. About 2 minutes on 2 cores.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from deepcmb.io.calibration import read_calibration
from deepcmb.io.maps import open_maps
from deepcmb.results import rst_grid
from deepcmb.uncertainty.coverage import NOMINAL, coverage_error, lowpass, pixel_coverage
from deepcmb.uncertainty.ood import THRESHOLD, reference

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "data" / "pretrained" / "bench" / "calibration.h5"
SETS = {"test": "sims/bench_test.yaml", "noise2": "sims/bench_noise.yaml"}


def deepcmb(*args):
    done = subprocess.run([sys.executable, "-m", "deepcmb.cli", *args, "--quiet"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])


def read(path, fields):
    """Geometry, the noise level (uK-arcmin) of each map and ``fields`` of every map of a simulation file."""
    with open_maps(path) as m:
        rows = np.arange(len(m.noise_index))
        noise = np.array([i.noise_p_uk_arcmin for i in m.instruments()])[m.noise_index[rows]]
        return m.geom, noise, {k: m.read(k, rows) for k in fields}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--maps", type=int, default=1000, help="maps per test set")
    parser.add_argument("--rst", type=Path, help="also write the table as reStructuredText here")
    args = parser.parse_args(argv)
    o = args.out
    o.mkdir(parents=True, exist_ok=True)

    cal = o / "calib_sims.h5"
    if not cal.exists():
        deepcmb("simulate", "--config", str(ROOT / "sims/bench_calib.yaml"), "--out", str(cal), "--workers", "1")
    _, modes, per_level = read_calibration(CALIBRATION)
    geom, _, c = read(cal, ("Q", "U"))
    pooled = reference(geom, c["Q"], c["U"], len(per_level.edges) - 1)
    print(f"per-level thresholds {per_level.thresholds.round(3).tolist()} at {per_level.noise_p.tolist()} "
          f"uK-arcmin; pooled threshold {pooled.thresholds[0]:.3f}")

    rows = []
    for tag, preset in SETS.items():
        sims, rec = o / f"{tag}.h5", o / f"{tag}_nn.h5"
        if not sims.exists():
            deepcmb("simulate", "--config", str(ROOT / preset), "--set", f"n_maps={args.maps}", "--out", str(sims),
                    "--workers", "1")
        if not rec.exists():
            deepcmb("reconstruct", "--method", "nn", "--model", "bench", "--symmetrize", "--sims", str(sims),
                    "--out", str(rec), "--uncertainty", str(CALIBRATION))
        geom, noise, m = read(sims, ("Q", "U", "kappa"))
        with h5py.File(rec) as f:
            mean, sigma = f["maps/kappa_mean"][...], f["maps/kappa_sigma"][...]
            score = f["meta/ood_score"][...]
        cover = pixel_coverage(lowpass(geom, m["kappa"].astype(float), modes.lmax), mean, sigma)
        old = pooled.score(geom, m["Q"], m["U"])
        for level in np.unique(noise):
            sel = noise == level
            err = coverage_error(cover[sel])
            rows.append([tag, f"{level:g}", str(sel.sum()),
                         f"{cover[sel, 0].mean():.3f} +- {err[0]:.3f}", f"{cover[sel, 1].mean():.3f} +- {err[1]:.3f}",
                         f"{100 * np.mean(old[sel] > THRESHOLD):.1f} %",
                         f"{100 * np.mean(score[sel] > THRESHOLD):.1f} %",
                         f"{np.median(score[sel]):.2f}"])
    head = ["set", "uK-arcmin", "maps", f"1 sigma ({NOMINAL[1]:.3f})", f"2 sigma ({NOMINAL[2]:.3f})",
            "flagged, pooled", "flagged, per level", "median score"]
    lines = rst_grid(head, rows)
    print("\n".join(lines))
    if args.rst:
        args.rst.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

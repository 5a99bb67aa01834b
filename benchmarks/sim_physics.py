"""Print the flat-sky simulation checks of tests/test_flatsky_physics.py as a table.

Usage: python benchmarks/sim_physics.py [--n 400] [--seed 2024]
"""

import argparse

import numpy as np

from deepcmb.cosmology import compute_spectra
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.sample import Instrument
from deepcmb.validation import CMB_EDGES, KAPPA_EDGES, NOISE_EDGES, simulate_many, spectrum_ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    geom = FlatSkyGeometry((128, 128), 2.34375)
    spectra = compute_spectra({})
    inst = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
    r = spectrum_ratios(geom, spectra, inst, simulate_many(geom, spectra, inst, args.n, args.seed))
    print(f"{args.n} sims of 128x128 at 2.34375', seed {args.seed}: mean binned spectrum / expectation")
    for title, edges, keys in (("lensed CMB", CMB_EDGES, ("TT", "EE", "BB", "BB_patch", "BB_sigma", "TT_observed")),
                               ("kappa", KAPPA_EDGES, ("kk", "kk_flat", "kk_sigma")),
                               ("noise", NOISE_EDGES, ("noise_T", "noise_Q", "noise_U"))):
        print(f"\n{title:>12s} " + " ".join(f"{k:>9s}" for k in keys))
        for j in range(len(edges) - 1):
            print(f"{edges[j]:5.0f}-{edges[j + 1]:5.0f} " + " ".join(f"{r[k][j]:9.4f}" for k in keys))


if __name__ == "__main__":
    main()

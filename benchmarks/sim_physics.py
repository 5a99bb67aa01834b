"""Print the flat-sky simulation checks of tests/test_flatsky_physics.py as tables (same seeds).

Usage: python benchmarks/sim_physics.py
"""

import numpy as np

from deepcmb.cosmology import compute_spectra
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.sample import Instrument
from deepcmb.validation import CMB_EDGES, KAPPA_EDGES, NOISE_EDGES, kappa_ratios, simulate_many, spectrum_ratios


def _table(title, edges, ratios, keys):
    print(f"\n{title:>12s} " + " ".join(f"{k:>11s}" for k in keys))
    for j in range(len(edges) - 1):
        print(f"{edges[j]:5.0f}-{edges[j + 1]:5.0f} " + " ".join(f"{ratios[k][j]:11.4f}" for k in keys))


def main():
    spectra = compute_spectra({})
    inst = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
    g128, g64 = FlatSkyGeometry((128, 128), 2.34375), FlatSkyGeometry((64, 64), 2.34375)
    r = spectrum_ratios(g128, spectra, inst, simulate_many(g128, spectra, inst, 400, 2024))
    r64 = spectrum_ratios(g64, spectra, inst, simulate_many(g64, spectra, inst, 1600, 64))
    r.update({f"{k}_64": v for k, v in r64.items() if k.startswith("BB")})
    print("mean binned spectrum / expectation; 400 sims of 128x128 (and 1600 of 64x64) at 2.34375'")
    _table("lensed CMB", CMB_EDGES, r, ("TT", "EE", "BB", "BB_patch", "BB_sigma", "TT_observed", "BB_64",
                                        "BB_patch_64"))
    _table("kappa", KAPPA_EDGES, kappa_ratios(g128, spectra, inst, 2000, 77), ("kk", "kk_sigma"))
    _table("noise", NOISE_EDGES, r, ("noise_T", "noise_Q", "noise_U"))


if __name__ == "__main__":
    main()

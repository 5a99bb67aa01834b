"""The cutout of a HEALPix map end to end: full-sky lensed maps -> FITS -> ``deepcmb cutout`` -> QE -> rho_L.

Run as::

    python benchmarks/cutout_e2e.py OUT [--nside 2048] [--lmax 3000] [--rst docs/results/cutout.rst]

Simulates one full-sky lensed CMB realisation of the fiducial cosmology to ``--lmax`` (lenspyx,
:func:`deepcmb.curvedsky.lensed_alm`), convolves it with a 1' Gaussian beam, synthesises the HEALPix Q and
U maps at ``--nside`` and adds white noise of 1 uK-arcmin per HEALPix pixel; writes them with healpy as a
FITS file (``POLCCONV = 'COSMO'``), with a mask that is 1 at ``|lat| > 30`` deg (a toy galactic cut) and
the true convergence map beside them. Then runs, as a user would::

    python -m deepcmb.cli cutout --maps OUT/maps.fits --mask OUT/mask.fits --config OUT/cutout.yaml --out OUT/obs.h5
    python -m deepcmb.cli reconstruct --method qe --sims OUT/obs.h5 --out OUT/rec_qe.h5 \\
        --estimator EB --apodize-arcmin 30 --lmax 3000

(``OUT/cutout.yaml``: 128 x 128 patches of 2.34375' centred on the pixels of a HEALPix grid of nside 8,
kept when wholly inside the mask), cuts the true kappa map at the same patches as ``deepcmb cutout``
cuts a temperature map (:func:`deepcmb.cutout.healpix_alm`, then the exact values at the pixel centres)
and, as a reference, writes the same sky evaluated exactly at the same patch pixels from its
coefficients with white noise of the same depth drawn per patch pixel (``OUT/exact.h5``, no HEALPix map
on the way) and reconstructs it with the same QE. Prints, per L bin, the cross-correlation of each
reconstruction with the truth (windowed as the evaluation stage does: truth times W^2), the
amplitude of their cross-spectrum over the truth's power, and the cross-correlation expected from the
analytic N0 of the reconstruction file, sqrt(C_L / (C_L + N0_L)). With ``--rst`` it writes that table.
Files already in OUT are re-used. About 10 minutes on 2 cores at nside 2048 (6 at nside 1024).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import yaml

from deepcmb import curvedsky, flatsky
from deepcmb.binning import bin_centres, bin_theory, binned_fourier_power, linear_bins
from deepcmb.cosmology import compute_spectra
from deepcmb.cutout import healpix_alm
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.io.observations import open_observations, write_observations
from deepcmb.io.reconstruction import open_reconstruction
from deepcmb.qe import cosine_window
from deepcmb.results import rst_grid

SEED = 2026
BEAM_ARCMIN, NOISE_UK_ARCMIN, TAPER_ARCMIN = 1.0, 1.0, 30.0
CUTOUT = {"shape": [128, 128], "pixel_arcmin": 2.34375, "patch_nside": 8, "min_mask_fraction": 1.0,
          "beam_fwhm_arcmin": BEAM_ARCMIN, "noise_p_uk_arcmin": NOISE_UK_ARCMIN}
BINS = {"Lmin": 40.0, "Lmax": 2000.0, "width": 160.0}
E_BINS = (200.0, 3000.0, 200.0)


def _cli(*args):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepcmb.cli", *map(str, args)], check=True)
    return time.perf_counter() - t0


def simulate(out: Path, nside: int, lmax: int) -> dict:
    """Write OUT/maps.fits (Q, U), OUT/mask.fits, OUT/kappa.fits and the observed E/B coefficients
    OUT/sky_alm.npz; returns the seconds each step took."""
    spectra = compute_spectra({})
    rng = np.random.default_rng(SEED)
    t0 = time.perf_counter()
    tlm, elm = curvedsky.correlated_te_alm(spectra.unlensed_cl("TT"), spectra.unlensed_cl("EE"),
                                           spectra.unlensed_cl("TE"), curvedsky.white_alm(lmax, rng),
                                           curvedsky.white_alm(lmax, rng))
    plm = curvedsky.gaussian_alm(spectra.clpp, curvedsky.white_alm(lmax, rng))
    _, elm_len, blm_len = curvedsky.lensed_alm(tlm, elm, None, plm)
    t_lens = time.perf_counter() - t0
    ell = np.arange(lmax + 1, dtype=float)
    beam = flatsky.gaussian_beam(BEAM_ARCMIN, ell)
    _, q, u = hp.alm2map([np.zeros_like(elm), curvedsky.scale_alm(elm_len, beam), curvedsky.scale_alm(blm_len, beam)],
                         nside, lmax=lmax, pol=True)
    sigma = NOISE_UK_ARCMIN / np.sqrt(hp.nside2pixarea(nside, degrees=True) * 3600.0)
    q += sigma * rng.standard_normal(q.size)
    u += sigma * rng.standard_normal(u.size)
    hp.write_map(out / "maps.fits", [q, u], column_names=["Q_STOKES", "U_STOKES"], column_units="uK",
                 extra_header=[("POLCCONV", "COSMO")], overwrite=True)
    _, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
    hp.write_map(out / "mask.fits", (np.abs(lat) > 30.0).astype(np.float32), overwrite=True)
    kappa = hp.alm2map(curvedsky.scale_alm(plm, 0.5 * ell * (ell + 1.0)), nside, lmax=lmax)
    hp.write_map(out / "kappa.fits", kappa, overwrite=True)
    np.savez(out / "sky_alm.npz", elm=curvedsky.scale_alm(elm_len, beam), blm=curvedsky.scale_alm(blm_len, beam))
    return {"lensing_s": t_lens, "maps_s": time.perf_counter() - t0 - t_lens}


def _centres(path: Path) -> tuple:
    """Geometry and patch centres of an observation file written by ``deepcmb cutout``."""
    with open_observations(path) as obs:
        geom = obs.geom
    with h5py.File(path) as f:
        return geom, np.stack([f["patches/lon_deg"][...], f["patches/lat_deg"][...]], axis=-1)


def exact_patches(out: Path) -> None:
    """OUT/exact.h5: the same sky evaluated exactly at the same patch pixels from its coefficients, plus
    white noise of the same depth drawn per patch pixel (no HEALPix map on the way)."""
    geom, centres = _centres(out / "obs.h5")
    alm = np.load(out / "sky_alm.npz")
    theta, phi, psi = curvedsky.patch_pointing(geom, centres)
    q, u = curvedsky.eb2qu_points(alm["elm"], alm["blm"], theta, phi, psi)
    rng = np.random.default_rng(SEED + 1)
    sigma = NOISE_UK_ARCMIN / geom.pixel_arcmin
    write_observations(out / "exact.h5", q + sigma * rng.standard_normal(q.shape),
                       u + sigma * rng.standard_normal(u.shape), pixel_arcmin=geom.pixel_arcmin,
                       beam_fwhm_arcmin=BEAM_ARCMIN, noise_p_uk_arcmin=NOISE_UK_ARCMIN, periodic=False)


def true_kappa(out: Path, lmax: int) -> np.ndarray:
    """The kappa map cut at the patches of OUT/obs.h5 exactly as the Stokes maps are (harmonic analysis,
    then the values at the pixel centres), shape (npatch, ny, nx)."""
    geom, centres = _centres(out / "obs.h5")
    klm, _ = healpix_alm(hp.read_map(out / "kappa.fits")[None], 0, lmax)
    theta, phi, _ = curvedsky.patch_pointing(geom, centres)
    return curvedsky.alm2points(klm[0], theta, phi)


def measure(rec_path: Path, truth: np.ndarray, geom: FlatSkyGeometry) -> dict:
    """Cross-correlation of a QE reconstruction with the true kappa at the same patches."""
    spectra = compute_spectra({})
    with open_reconstruction(rec_path) as r:
        rec = r["maps/kappa"][...].astype(float)
        n0_L, n0 = r["n0/L"][...], r["n0/kappa"][0]
    w2 = cosine_window(geom, TAPER_ARCMIN) ** 2
    edges = linear_bins(BINS["Lmin"], BINS["Lmax"], BINS["width"])
    fr, ft = geom.map2fourier(rec), geom.map2fourier(truth * w2)
    cross = np.mean([binned_fourier_power(geom, a, b, edges) for a, b in zip(fr, ft)], axis=0)
    auto_r = np.mean([binned_fourier_power(geom, a, a, edges) for a in fr], axis=0)
    auto_t = np.mean([binned_fourier_power(geom, b, b, edges) for b in ft], axis=0)
    clkk = bin_theory(geom, spectra.clkk, edges)
    n0_on = np.interp(bin_centres(geom, edges), n0_L, n0)
    return {"n_patches": len(rec), "L": bin_centres(geom, edges).tolist(),
            "rho": (cross / np.sqrt(auto_r * auto_t)).tolist(),
            "amplitude": (cross / auto_t).tolist(), "rho_n0": np.sqrt(clkk / (clkk + n0_on)).tolist()}


def e_correlation(out: Path) -> dict:
    """Per multipole bin, the correlation of the E modes of the cutout (OUT/obs.h5) with those of the exact
    patches (OUT/exact.h5), both windowed, and its ceiling S/(S+N) for their independent noise."""
    spectra = compute_spectra({})
    with open_observations(out / "obs.h5") as a, open_observations(out / "exact.h5") as b:
        geom, rows = a.geom, np.arange(a.n_maps)
        w = cosine_window(geom, TAPER_ARCMIN)
        e_cut = geom.qu2eb(w * a.read("Q", rows), w * a.read("U", rows))[0]
        e_exact = geom.qu2eb(w * b.read("Q", rows), w * b.read("U", rows))[0]
    edges = linear_bins(*E_BINS)
    cross = np.mean([binned_fourier_power(geom, x, y, edges) for x, y in zip(e_cut, e_exact)], axis=0)
    autos = [np.mean([binned_fourier_power(geom, x, x, edges) for x in e], axis=0) for e in (e_cut, e_exact)]
    ell = np.arange(spectra.lmax + 1, dtype=float)
    signal = bin_theory(geom, spectra.lensed_cl("EE") * flatsky.gaussian_beam(BEAM_ARCMIN, ell) ** 2, edges)
    noise = np.radians(NOISE_UK_ARCMIN / 60.0) ** 2
    return {"l": bin_centres(geom, edges).tolist(), "e_correlation": (cross / np.sqrt(autos[0] * autos[1])).tolist(),
            "e_ceiling": (signal / (signal + noise)).tolist()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--nside", type=int, default=2048)
    p.add_argument("--lmax", type=int, default=3000)
    p.add_argument("--rst", type=Path, default=None)
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    record = out / "cutout_e2e.json"
    times = json.loads(record.read_text())["times"] if record.exists() else {}  # of the steps re-used
    if not (out / "sky_alm.npz").exists():
        times.update(simulate(out, args.nside, args.lmax))
    (out / "cutout.yaml").write_text(yaml.safe_dump({"cutout": CUTOUT}))
    if not (out / "obs.h5").exists():
        times["cutout_s"] = _cli("cutout", "--maps", out / "maps.fits", "--mask", out / "mask.fits", "--config",
                                 out / "cutout.yaml", "--out", out / "obs.h5")
    qe = ["--estimator", "EB", "--apodize-arcmin", TAPER_ARCMIN, "--lmax", args.lmax]
    if not (out / "rec_qe.h5").exists():
        times["qe_s"] = _cli("reconstruct", "--method", "qe", "--sims", out / "obs.h5", "--out", out / "rec_qe.h5", *qe)
    if not (out / "rec_exact.h5").exists():
        exact_patches(out)
        _cli("reconstruct", "--method", "qe", "--sims", out / "exact.h5", "--out", out / "rec_exact.h5", *qe)
    truth, geom = true_kappa(out, args.lmax), _centres(out / "obs.h5")[0]
    cut, exact = measure(out / "rec_qe.h5", truth, geom), measure(out / "rec_exact.h5", truth, geom)
    result = {"nside": args.nside, "lmax": args.lmax, "times": times, **cut, "rho_exact": exact["rho"],
              "amplitude_exact": exact["amplitude"], **e_correlation(out)}
    record.write_text(json.dumps(result, indent=1))
    rows = [[f"{L:.0f}", f"{r:.3f}", f"{x:.3f}", f"{e:.3f}", f"{a:.3f}", f"{ax:.3f}"]
            for L, r, x, e, a, ax in zip(result["L"], result["rho"], result["rho_exact"], result["rho_n0"],
                                         result["amplitude"], result["amplitude_exact"])]
    table = "\n".join(rst_grid(["L", "rho cutout", "rho exact patches", "sqrt(C/(C+N0))", "amplitude cutout",
                                "amplitude exact"], rows))
    e_table = "\n".join(rst_grid(["l", "E correlation cutout / exact", "ceiling S/(S+N)"],
                                  [[f"{l:.0f}", f"{c:.4f}", f"{m:.4f}"] for l, c, m in
                                   zip(result["l"], result["e_correlation"], result["e_ceiling"])]))
    print(json.dumps({k: v for k, v in result.items() if k in ("n_patches", "times")}))
    print(table)
    print(e_table)
    if args.rst:
        t = result["times"]
        timed = {"cutout_s", "qe_s"} <= set(t)
        took = f"; cutout {t['cutout_s']:.0f} s, QE {t['qe_s']:.0f} s on 2 shared cores" if timed else ""
        head = (f"{result['n_patches']} patches of 128 x 128 at 2.34375' cut from nside {args.nside} maps (lmax "
                f"{args.lmax}, 1' beam, 1 uK-arcmin); EB QE, 30' taper; ``python benchmarks/cutout_e2e.py OUT --rst "
                f"docs/results/cutout.rst``{took}.")
        e_head = ("The E modes of the cutout against those of the exact patches (windowed; their noise "
                  "realisations differ, hence the ceiling):")
        args.rst.write_text(head + "\n\n" + table + "\n\n" + e_head + "\n\n" + e_table + "\n")


if __name__ == "__main__":
    main()

"""The quadratic estimator on masked maps with a noise map against the periodic, unmasked QE on the same skies.

Run as::

    python benchmarks/masked_qe.py [--masks 8] [--maps 512] [--mean-field-maps 32] [--response-maps 256]
                                   [--estimator MV_POL] [--rst docs/results/masked_qe.rst]

The survey is that of ``sims/masked_test.yaml`` (64 x 64 non-periodic patches of 2.34375' cut from
128 x 128 periodic boxes, 1' beam, 1 uK-arcmin polarization noise modulated by a noise map of 0.7-1.5 times
that with stripes, a 15' edge taper and point-source holes), at the Planck 2018 fiducial cosmology.
``--masks`` masks and noise maps are drawn; for each, the C^-1-filtered estimator
(:mod:`deepcmb.qe.masked`, padded grid twice the map's side) simulates ``--mean-field-maps`` maps for its
mean field, and ``--response-maps`` maps over all masks give the Monte Carlo response. Then ``--maps``
independent test skies (cycling over the masks) are simulated on their periodic boxes and observed twice:
through the mask and the noise map (the masked estimator), and whole, with white noise of 1 uK-arcmin (the
periodic QE on the box, its kappa cut to the map). Over the observed region (both maps and the truth
multiplied by the mask, pseudo-spectra divided by w2) it prints per L bin the transfer
<k_hat k>/<k k> of the masked estimator with its error (scatter over the test maps combined with the
error of the Monte Carlo response), the correlation rho with the truth of both estimators, the ratio of
their effective noise N_eff = C_kk (1/rho^2 - 1), and the mean field's power over C_kk beside the power a
zero mean field would show from the finite number of simulations; then the cost per map (filter and
estimate) and the mean number of conjugate-gradient iterations. About 5 minutes on 2 cores with the
defaults.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from deepcmb.binning import bin_theory
from deepcmb.cosmology import compute_spectra
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.qe import QuadraticEstimator
from deepcmb.qe.masked import MaskedQE, Simulations, effective_noise, monte_carlo, observed_cross
from deepcmb.results import rst_grid
from deepcmb.flatsky import white_noise_map
from deepcmb.sample import Instrument, sample_rng
from deepcmb.survey import Survey, box_cut

ROOT = Path(__file__).resolve().parent.parent
EDGES = np.array([150.0, 450.0, 750.0, 1050.0, 1350.0, 1650.0, 2000.0, 2500.0, 3000.0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--maps", type=int, default=512)
    parser.add_argument("--mean-field-maps", type=int, default=32)
    parser.add_argument("--response-maps", type=int, default=256)
    parser.add_argument("--estimator", default="MV_POL")
    parser.add_argument("--rst", type=Path)
    args = parser.parse_args()

    preset = yaml.safe_load((ROOT / "sims" / "masked_test.yaml").read_text())
    geom = FlatSkyGeometry(tuple(preset["geometry"]["shape"]), preset["geometry"]["pixel_arcmin"])
    inst = Instrument(preset["instrument"]["beam_fwhm_arcmin"], 1.0 / np.sqrt(2.0),
                      preset["instrument"]["noise_p_uk_arcmin"][0])
    survey = Survey.from_config(preset["survey"])
    patch = survey.on(geom, periodic=False)
    seed = preset["seed"]
    masks = np.stack([patch.mask(sample_rng(seed, i, "mask")) for i in range(args.masks)])
    ivars = np.stack([patch.ivar_p(inst.noise_p_uk_arcmin, sample_rng(seed, i, "depth")) for i in range(args.masks)])
    spectra = compute_spectra({})
    mean = Instrument(inst.beam_fwhm_arcmin, inst.noise_t_uk_arcmin, effective_noise(geom.pixel_arcmin, masks * ivars))
    mqe = MaskedQE(geom, spectra, mean, args.estimator, periodic=False, pad=survey.pad, cg_tol=1e-3, cg_maxiter=500)
    sims = Simulations(mqe, spectra, inst, seed)
    start = time.perf_counter()
    mc = monte_carlo(mqe, sims, masks, ivars, args.mean_field_maps, args.response_maps, EDGES, 3.0)
    mc_time = time.perf_counter() - start
    periodic = QuadraticEstimator(mqe.box, spectra, inst, args.estimator)
    cut = box_cut(mqe.box.shape, geom.shape)

    first = args.response_maps + args.masks * args.mean_field_maps
    spectra_of = {k: [] for k in ("cross", "auto_hat", "auto_true", "cross_p", "auto_p", "mf")}
    its, cost = [], 0.0
    for s in range(args.maps):
        g, index = s % args.masks, first + s
        q, u, truth = sims.draw(index, ivars[g])
        t0 = time.perf_counter()
        kappa_f, n_it = mqe.kappa_fourier(q, u, masks[g] * ivars[g])
        maps = mc.correct(mqe, kappa_f, g)
        cost += time.perf_counter() - t0
        its.append(n_it)
        # the same sky, whole and periodic, with white noise of the nominal depth
        sky, _ = sims.sky(index)
        rng = sample_rng(seed + 1, index, "noise")
        observed = [sky[k] + white_noise_map(mqe.box, inst.noise_p_uk_arcmin, rng) for k in range(2)]
        kappa_p = periodic.estimate({"Q": observed[0], "U": observed[1]})["kappa"][cut]
        m = masks[g]
        spectra_of["cross"].append(observed_cross(geom, maps["kappa"], truth, m, EDGES))
        spectra_of["auto_hat"].append(observed_cross(geom, maps["kappa"], maps["kappa"], m, EDGES))
        spectra_of["auto_true"].append(observed_cross(geom, truth, truth, m, EDGES))
        spectra_of["cross_p"].append(observed_cross(geom, kappa_p, truth, m, EDGES))
        spectra_of["auto_p"].append(observed_cross(geom, kappa_p, kappa_p, m, EDGES))
    for g in range(args.masks):
        mf = mc.correct(mqe, np.zeros(mqe.box.fourier_shape(), complex), g)["kappa_mean_field"]
        spectra_of["mf"].append(observed_cross(geom, mf, mf, masks[g], EDGES))
    sp = {k: np.array(v) for k, v in spectra_of.items()}
    total = {k: v.sum(axis=0) for k, v in sp.items()}
    transfer = total["cross"] / total["auto_true"]
    scatter = np.sqrt(args.maps * np.var(sp["cross"] - transfer * sp["auto_true"], axis=0, ddof=1)) / total["auto_true"]
    error = np.hypot(scatter, mc.error)
    rho = total["cross"] / np.sqrt(total["auto_hat"] * total["auto_true"])
    rho_p = total["cross_p"] / np.sqrt(total["auto_p"] * total["auto_true"])
    clkk = bin_theory(geom, 0.25 * geom.ell() ** 4 * np.interp(geom.ell(), np.arange(len(spectra.clpp)),
                                                                spectra.clpp), EDGES)
    neff_ratio = (1 / rho**2 - 1) / (1 / rho_p**2 - 1)
    mf_power = sp["mf"].mean(axis=0) / clkk
    mf_noise = (total["auto_hat"] / args.maps) / args.mean_field_maps / clkk

    rows = []
    for b in range(len(EDGES) - 1):
        rows.append([f"{EDGES[b]:.0f}-{EDGES[b + 1]:.0f}", f"{transfer[b]:.3f} +- {error[b]:.3f}",
                     f"{mc.response[b]:.3f} +- {mc.error[b]:.3f}" + ("" if mc.applied[b] else " (not applied)"),
                     f"{rho[b]:.3f}", f"{rho_p[b]:.3f}", f"{neff_ratio[b]:.2f}", f"{mf_power[b]:.3f}",
                     f"{mf_noise[b]:.3f}"])
    header = ["L", "transfer (masked)", "R_MC", "rho masked", "rho periodic", "N_eff masked / periodic",
              "mean field / C_kk", "zero MF noise / C_kk"]
    table = "\n".join(rst_grid(header, rows))
    w2 = float(np.mean(masks**2))
    summary = (f"{args.estimator}, {args.maps} test maps on {args.masks} masks and noise maps (w2 = {w2:.3f}), "
               f"{args.mean_field_maps} mean-field simulations per mask, {args.response_maps} response simulations; "
               f"cost per map {1e3 * cost / args.maps:.0f} ms (C^-1 filter on the {mqe.box.shape[0]} x "
               f"{mqe.box.shape[1]} grid, {np.mean(its):.0f} CG iterations on average, tolerance 1e-3, and the "
               f"estimate); Monte Carlo stage {mc_time:.0f} s ({len(mc.iterations)} simulations). "
               f"Delta_P is the polarization noise.")
    print(table)
    print(summary)
    if args.rst:
        args.rst.write_text(f"{table}\n\n{summary}\n")


if __name__ == "__main__":
    main()

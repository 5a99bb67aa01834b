"""The quadratic-estimator stage on masked maps: files whose mask is not all ones or whose ``ivar_p`` is not
constant (:attr:`deepcmb.io.observations.Observations.masked`).

Called by :func:`deepcmb.qe.stage.run_reconstruct_qe` for such files. For each noise level of the file:

1. the inverse noise of every map is :math:`N^{-1} = M\\, \\mathrm{ivar}_P` (a missing mask is all
   ones; a missing ``ivar_p`` is the white noise of ``noise_p_uk_arcmin``), and the maps sharing the
   same mask and ``ivar_p`` form one group;
2. a :class:`~deepcmb.qe.masked.MaskedQE` is set up with the isotropic filters at the mean inverse noise
   of the observed pixels of all maps of the level (its analytic response normalises the estimates);
3. :func:`~deepcmb.qe.masked.monte_carlo` simulates ``mean_field_maps`` maps per group (mean field) and
   ``response_maps`` maps over the groups (Monte Carlo response and N0), with random streams from
   ``mc_seed``;
4. every map is :math:`C^{-1}` filtered, estimated, its group's mean field subtracted and the result
   divided by the Monte Carlo response where it is measured well enough (``response_min_snr``).

Non-periodic maps are embedded in a periodic grid ``pad`` times larger per side, unobserved outside the
map. Only the polarization estimators (EE, EB, MV_POL) are available; ``wiener`` is refused (it assumes
the isotropic N0). An uncertainty calibration (``--uncertainty``) must have been made on masked maps
(:mod:`deepcmb.uncertainty.window`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..binning import bin_centres, linear_bins
from ..cosmology import compute_spectra
from ..errors import ConfigError, InputError
from ..io.reconstruction import ReconstructionWriter
from ..progress import Progress
from ..sample import Instrument
from ..uncertainty.stage import Uncertainty
from .masked import MaskedQE, MonteCarlo, Simulations, level_weights, monte_carlo
from .quadratic import QuadraticEstimator

if TYPE_CHECKING:
    from ..io.observations import Observations
    from ..io.sims import SimsMaps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Level:
    """What one noise level of the file needs: its rows, their masks and ``ivar_p``, the group (distinct mask
    and noise map) of each, the estimator, its Monte Carlo corrections and the mean-noise instrument."""

    rows: np.ndarray
    mask: np.ndarray
    ivar: np.ndarray
    group: np.ndarray
    mqe: MaskedQE
    mc: MonteCarlo
    instrument: Instrument


def run_masked(source: SimsMaps | Observations, cfg: dict, label: str, data: str | Path, out: str | Path,
               config: dict, *, uncertainty: str | Path | None, overwrite: bool, progress: bool) -> Path:
    """Reconstruct every map of an open masked file (arguments as :func:`deepcmb.qe.stage.run_reconstruct_qe`,
    ``cfg`` resolved, ``source`` open); returns the written path.

    Raises
    ------
    InputError
        Without ``/ivar_p`` and without white noise, or with an uncertainty calibration of another estimator or
        of maps without a mask (:class:`~deepcmb.uncertainty.stage.Uncertainty`).
    ConfigError
        With ``wiener``, a temperature estimator, or ``mc_seed`` equal to the seed of a simulation file (the
        Monte Carlo maps would repeat its skies).
    """
    if source.kind == "simulations" and int(source.file.attrs["seed"]) == cfg["mc_seed"]:
        raise ConfigError(f"qe.mc_seed: {cfg['mc_seed']} is the seed of {data}; the Monte Carlo maps would repeat "
                          "its skies, choose another")
    if cfg["wiener"]:
        raise ConfigError("qe.wiener: not available for masked maps (the Wiener filter assumes the isotropic N0)")
    geom, levels, n = source.geom, source.noise_index, source.n_maps
    spectra = compute_spectra({})
    instruments = source.instruments()
    Lmin, Lmax = cfg["Lmin"], cfg["Lmax"]
    attrs = {"estimator": label, "lmin": cfg["lmin"], "lmax": cfg["lmax"], "Lmin": Lmin, "Lmax": Lmax,
             "wiener": False, "response": "gradient", "apodize_arcmin": 0.0, "filter": "cinv",
             "mean_field": f"simulated, {cfg['mean_field_maps']} maps per mask and noise map",
             "response_correction": f"Monte Carlo, {cfg['response_maps']} maps, in the bins with "
                                    f"R/sigma >= {cfg['response_min_snr']:g}"}
    uq = None
    if uncertainty:  # checked before the Monte Carlo
        uq = Uncertainty(uncertainty, "qe", attrs, geom, [i.noise_p_uk_arcmin for i in instruments], data)
        attrs.update(uq.attrs)
    edges = linear_bins(max(Lmin, geom.ell_fundamental), Lmax, 2.0 * geom.ell_fundamental)
    nbin = len(edges) - 1
    runs, w2, w4, next_index = {}, [], [], 0
    for lev in np.unique(levels):
        lw = level_weights(source, lev)
        rows, mask, ivar, first, group, mean = lw.rows, lw.mask, lw.ivar, lw.first, lw.group, lw.instrument
        inst = instruments[lev]
        mqe = MaskedQE(geom, spectra, mean, label, lmin=cfg["lmin"], lmax=cfg["lmax"], Lmin=Lmin, Lmax=Lmax,
                       periodic=source.periodic, pad=cfg["pad"], cg_tol=cfg["cg_tol"], cg_maxiter=cfg["cg_maxiter"],
                       precision=cfg["precision"])
        sims = Simulations(mqe, spectra, inst, cfg["mc_seed"])
        n_sims = cfg["response_maps"] + cfg["mean_field_maps"] * len(first)
        with Progress(n_sims, f"QE level {lev}: Monte Carlo ({len(first)} masks)", "sim", enabled=progress,
                      log=log) as bar:
            mc = monte_carlo(mqe, sims, mask[first], ivar[first], cfg["mean_field_maps"], cfg["response_maps"],
                             edges, cfg["response_min_snr"], first_index=next_index, progress=bar.update)
        next_index += n_sims
        runs[lev] = _Level(rows, mask, ivar, group, mqe, mc, mean)
        w2.append(np.mean(mask**2, axis=(1, 2)))
        w4.append(np.mean(mask**4, axis=(1, 2)))
    qe = runs[levels[0]].mqe.qe
    attrs.update(estimators=list(qe.names), mv_covariance=qe.mv_covariance,
                 mask_w2=float(np.mean(np.concatenate(w2))), mask_w4=float(np.mean(np.concatenate(w4))))
    iterations = np.zeros(n, np.int64)
    fields = ["kappa", "phi", "kappa_mean_field"] + (list(uq.fields) if uq else [])
    with ReconstructionWriter(out, np.arange(n), fields, data, "qe", config, attrs=attrs,
                              units={"kappa_mean_field": "1"}, overwrite=overwrite) as writer:
        with Progress(n, f"QE {attrs['estimator']} (masked)", "map", enabled=progress, log=log) as bar:
            for run in runs.values():
                for k, row in enumerate(run.rows):
                    q, u = (source.read(name, [row])[0] for name in ("Q", "U"))
                    kappa, iterations[row] = run.mqe.kappa_fourier(q, u, run.mask[k] * run.ivar[k])
                    maps = run.mc.correct(run.mqe, kappa, run.group[k])
                    if uq:
                        maps.update({name: m[0] for name, m in uq.maps(maps["kappa"][None], levels[[row]],
                                                                       [row]).items()})
                    writer.write(int(row), {name: m[None] for name, m in maps.items()})
                    bar.update(1)
        writer.write_meta("noise_index", levels)
        writer.write_meta("cg_iterations", iterations)
        if uq:
            uq.finish(writer, np.arange(n), levels)
        n_levels = len(instruments)
        analytic = {lev: QuadraticEstimator(geom, spectra, run.instrument, attrs["estimator"], lmin=cfg["lmin"],
                                            lmax=cfg["lmax"], Lmin=Lmin, Lmax=Lmax) for lev, run in runs.items()}

        def per_level(values, fill=np.nan):
            """``values(lev)`` of every noise level of the file (``fill`` for a level without maps)."""
            return np.stack([values(lev) if lev in runs else np.full(nbin, fill) for lev in range(n_levels)])

        writer.write_group("response", {
            "edges": edges, "L": bin_centres(geom, edges),
            "R_mc": per_level(lambda lev: runs[lev].mc.response),
            "R_mc_error": per_level(lambda lev: runs[lev].mc.error),
            "applied": per_level(lambda lev: runs[lev].mc.applied.astype(np.int8), 0),
            "n0_mc": per_level(lambda lev: runs[lev].mc.n0),
        })
        writer.write_group("n0", {
            "edges": edges, "L": bin_centres(geom, edges),
            "kappa": per_level(lambda lev: analytic[lev].n0_binned(edges)),
            "kappa_2d": np.stack([analytic[lev].n0_kappa if lev in analytic else np.full(geom.fourier_shape(), np.nan)
                                  for lev in range(n_levels)]),
        })
    return writer.out

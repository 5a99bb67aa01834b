"""Physics validation of the flat-sky simulations: binned spectra of many sims over their theory.

Used by the test suite (which asserts on the ratios) and by ``benchmarks/sim_physics.py`` (which
prints them), so the numbers quoted in the documentation (docs/simulate.rst) are exactly what the tests check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from . import binning as sp
from .flatsky import gaussian_beam, white_noise_cl
from .sample import FlatSimulator
from .patch_theory import periodic_lensed_cls

if TYPE_CHECKING:
    from .cosmology import CMBSpectra
    from .geometry import FlatSkyGeometry
    from .sample import Instrument

CMB_EDGES = sp.linear_bins(500, 3000, 250)
"""Bins of the lensed CMB spectrum checks (500 <= l < 3000, width 250)."""
KAPPA_EDGES = np.array([100, 200, 300, 400, 600, 800, 1000, 1500, 2000], float)
"""Bins of the kappa spectrum check."""
NOISE_EDGES = sp.linear_bins(200, 4400, 600)
"""Bins of the noise spectrum check."""

_FIELDS = ("T", "Q", "U", "T_lensed", "Q_lensed", "U_lensed", "kappa")


def simulate_many(geom: FlatSkyGeometry, spectra: CMBSpectra, instrument: Instrument, n_sims: int,
                  seed: int) -> dict[str, np.ndarray]:
    """Stack ``n_sims`` flat-sky samples: dict field -> ``(n_sims, ny, nx)`` (fields used below)."""
    maps = {f: np.empty((n_sims,) + geom.shape) for f in _FIELDS}
    sim = FlatSimulator(geom, spectra, instrument)
    for i in range(n_sims):
        s = sim.sample(seed, i, fields=_FIELDS)
        for f in _FIELDS:
            maps[f][i] = s[f]
    return maps


def _ratio(geom, est, theory, edges):
    return est.mean(axis=0) / sp.bin_theory(geom, theory, edges)


def spectrum_ratios(geom: FlatSkyGeometry, spectra: CMBSpectra, instrument: Instrument,
                    maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean binned spectra of simulated maps divided by their expectations.

    Parameters
    ----------
    geom : FlatSkyGeometry
    spectra : CMBSpectra
        The cosmology the maps were drawn from.
    instrument : Instrument
        Their beam and noise.
    maps : dict
        Output of :func:`simulate_many`.

    Returns
    -------
    dict
        Arrays of ratios per bin: ``TT``, ``EE``, ``BB`` (lensed, over CAMB's full-sky lensed
        spectra, bins :data:`CMB_EDGES`); ``BB_patch`` (over :func:`periodic_lensed_cls`);
        ``kk`` and ``kk_sigma`` (see :func:`kappa_ratios`); ``noise_T``, ``noise_Q``, ``noise_U`` (observed minus beam-convolved
        lensed map over the configured white-noise power, bins :data:`NOISE_EDGES`);
        ``TT_observed`` (over ``B_l^2 C_l^TT + N_l``). Also ``BB_sigma``: the standard error of
        the BB ratio, per bin.
    """
    e, b = geom.qu2eb(maps["Q_lensed"], maps["U_lensed"])
    bb = sp.binned_fourier_power(geom, b, b, CMB_EDGES)
    out = {
        "TT": _ratio(geom, sp.binned_auto_spectrum(geom, maps["T_lensed"], CMB_EDGES), spectra.lensed_cl("TT"),
                     CMB_EDGES),
        "EE": _ratio(geom, sp.binned_fourier_power(geom, e, e, CMB_EDGES), spectra.lensed_cl("EE"), CMB_EDGES),
        "BB": _ratio(geom, bb, spectra.lensed_cl("BB"), CMB_EDGES),
        "BB_patch": _ratio(geom, bb, periodic_lensed_cls(spectra, geom)[2], CMB_EDGES),
    }
    out["BB_sigma"] = out["BB"] * bb.std(axis=0) / bb.mean(axis=0) / np.sqrt(len(bb))
    kk = sp.binned_auto_spectrum(geom, maps["kappa"], KAPPA_EDGES)
    out.update(_kappa_ratio(geom, spectra, kk))
    beam = gaussian_beam(instrument.beam_fwhm_arcmin, geom.ell())
    for obs, depth in (("T", instrument.noise_t_uk_arcmin), ("Q", instrument.noise_p_uk_arcmin),
                       ("U", instrument.noise_p_uk_arcmin)):
        noise = maps[obs] - geom.fourier2map(geom.map2fourier(maps[f"{obs}_lensed"]) * beam)
        out[f"noise_{obs}"] = sp.binned_auto_spectrum(geom, noise, NOISE_EDGES).mean(axis=0) / white_noise_cl(depth)
    beam_l = gaussian_beam(instrument.beam_fwhm_arcmin, spectra.ell)
    observed = spectra.lensed_cl("TT") * beam_l**2 + white_noise_cl(instrument.noise_t_uk_arcmin)
    out["TT_observed"] = _ratio(geom, sp.binned_auto_spectrum(geom, maps["T"], CMB_EDGES), observed, CMB_EDGES)
    return out


def _kappa_ratio(geom, spectra, kk):
    ratio = _ratio(geom, kk, spectra.clkk, KAPPA_EDGES)
    return {"kk": ratio, "kk_sigma": ratio * kk.std(axis=0) / kk.mean(axis=0) / np.sqrt(len(kk))}


def kappa_ratios(geom: FlatSkyGeometry, spectra: CMBSpectra, instrument: Instrument, n_sims: int,
                 seed: int) -> dict[str, np.ndarray]:
    """Mean binned kappa power of ``n_sims`` sims over CAMB's ``[L(L+1)]^2 C^pp / 4``.

    Returns
    -------
    dict
        ``kk``: ratio per bin of :data:`KAPPA_EDGES`; ``kk_sigma``: its standard error.
    """
    sim = FlatSimulator(geom, spectra, instrument)
    kappa = np.stack([sim.sample(seed, i, fields=("kappa",))["kappa"] for i in range(n_sims)])
    return _kappa_ratio(geom, spectra, sp.binned_auto_spectrum(geom, kappa, KAPPA_EDGES))

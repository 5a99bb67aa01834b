"""Theory expectations that account for the simulation's finite periodic patch.

A periodic flat patch of side ``L`` holds lenses only at the discrete wavevectors ``2 pi n / L``:
none below the fundamental ``2 pi / L`` (72 for 5 deg) and a sparse, lumpy set of them at the
lowest few multiples. The unlensed CMB is band-limited below the Nyquist multipole. Both change the
lensed spectra slightly, most visibly lensed BB (a few per cent low on 5 deg patches), which is
sourced by lenses over a broad range including large scales.

:func:`periodic_lensed_cls` computes the lensed spectra such a patch should produce: CAMB's
curved-sky lensing integral (``camb.correlations.lensed_cls``) fed with the band-limited unlensed
spectra and an effective lensing power

.. math:: C_L^{\\phi\\phi,\\rm eff} = C_L^{\\phi\\phi}\\, n_{\\rm grid}(L) / n_{\\rm cont}(L),

where ``n_grid(L)`` counts the patch's Fourier modes with ``|l| - 1/2`` in ``[L, L + 1)`` and
``n_cont(L) = A (L + 1/2) / 2 pi`` is the continuum expectation. The lensing integral over the
azimuthally averaged discrete modes then equals the patch's discrete sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .cosmology import CMBSpectra
    from .geometry import FlatSkyGeometry


def effective_lensing_power(spectra: CMBSpectra, geom: FlatSkyGeometry, lmax_phi: float | None = None) -> np.ndarray:
    """Lensing power as sampled by the patch's discrete Fourier modes.

    Parameters
    ----------
    spectra : CMBSpectra
    geom : FlatSkyGeometry
    lmax_phi : float, optional
        Band limit of the simulated phi (default: Nyquist).

    Returns
    -------
    ndarray, shape (lmax + 1,)
        :math:`C_L^{\\phi\\phi,\\rm eff}`.
    """
    ell = spectra.ell
    lmax_phi = geom.ell_nyquist if lmax_phi is None else min(lmax_phi, geom.ell_nyquist)
    modes = geom.ell(real=False).ravel()
    modes = modes[(modes > 0) & (modes < lmax_phi)]
    # a mode of modulus |l| stands for the curved-sky multipole |l| - 1/2 (geometry.interp_spectrum)
    counts = np.bincount(np.floor(modes - 0.5).astype(int), minlength=ell.size)[: ell.size]
    continuum = geom.area * (ell + 0.5) / (2.0 * np.pi)
    return spectra.clpp * counts / continuum


def periodic_lensed_cls(spectra: CMBSpectra, geom: FlatSkyGeometry, lmax_cmb: float | None = None,
                        lmax_phi: float | None = None) -> np.ndarray:
    """Lensed spectra expected from flat periodic-patch simulations.

    Parameters
    ----------
    spectra : CMBSpectra
    geom : FlatSkyGeometry
    lmax_cmb, lmax_phi : float, optional
        Band limits of the simulated unlensed CMB and phi (default: Nyquist).

    Returns
    -------
    ndarray, shape (4, lmax + 1)
        Lensed ``TT, EE, BB, TE`` in µK² (plain C_l).
    """
    from camb import correlations

    ell = spectra.ell
    lmax_cmb = geom.ell_nyquist if lmax_cmb is None else min(lmax_cmb, geom.ell_nyquist)
    dl = ell * (ell + 1) / (2 * np.pi)
    unlensed = (spectra.unlensed * dl).T.copy()
    unlensed[ell >= lmax_cmb] = 0.0
    pp = effective_lensing_power(spectra, geom, lmax_phi) * (ell * (ell + 1)) ** 2 / (2 * np.pi)
    lensed = correlations.lensed_cls(unlensed, pp)[: ell.size, :4].T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dl > 0, lensed / dl, 0.0)

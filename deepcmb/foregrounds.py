"""Foreground residuals in simulated maps: polarized point sources below a masking threshold and a
Gaussian dust-like residual.

Real maps hold, after masking and component separation, what the mask and the cleaning missed. A
:class:`Foregrounds` (the ``foregrounds`` section of the simulate stage, :data:`SCHEMA`) adds two such
residuals to the lensed sky of every flat map, before the beam and the noise, so that they are observed
as the CMB is; the truth (``kappa``, ``*_lensed``, ``*_unlensed``) stays the CMB's own.

**Point sources.** A Poisson number of sources of mean :math:`n_s A` (:math:`n_s`:
``sources.per_deg2``, :math:`A` the area of the simulated box), at uniformly random positions, each
in one pixel; fluxes drawn from :math:`dN/dS \\propto S^{-\\gamma}` (``sources.slope``) between
:math:`S_{min}` and :math:`S_{max}` (``sources.flux_mjy``: sources above :math:`S_{max}` are the masked
ones), polarization fraction :math:`p` (``sources.pol_fraction``) and a uniformly random polarization
angle :math:`\\chi`. A source of flux :math:`S` in a pixel of solid angle :math:`\\Omega` raises the
CMB temperature there by

.. math:: \\Delta T = \\frac{S}{\\Omega\\, \\partial B_\\nu / \\partial T}, \\qquad
          \\frac{\\partial B_\\nu}{\\partial T} = \\frac{2 k_B \\nu^2}{c^2} \\frac{x^2 e^x}{(e^x - 1)^2},
          \\quad x = \\frac{h \\nu}{k_B T_{CMB}},

(thermodynamic µK at the frequency :math:`\\nu`, ``sources.frequency_ghz``), and
:math:`Q + iU = p\\, \\Delta T\\, e^{2 i \\chi}`.

**Dust-like residual.** A Gaussian random field in Q and U with power laws

.. math:: C_\\ell^{EE} = \\frac{2\\pi D_{80}}{80 \\cdot 81} \\left(\\frac{\\ell}{80}\\right)^{\\alpha}, \\qquad
          C_\\ell^{BB} = r_{BE}\\, C_\\ell^{EE},

with :math:`D_{80}` = ``dust.d80_ee_uk2`` (µK², the :math:`D_\\ell = \\ell(\\ell+1)C_\\ell/2\\pi` at
:math:`\\ell = 80`), :math:`\\alpha` = ``dust.alpha`` (-2.42 for Galactic dust, Planck 2018 XI) and
:math:`r_{BE}` = ``dust.bb_over_ee`` (0.5 in Planck 2018 XI), drawn on the periodic box (no power
below the box's fundamental mode).

Every random number comes from the map's own streams (:func:`deepcmb.sample.sample_rng`, components
``'sources'`` and ``'dust'``), so the maps do not depend on the number of workers.

References
----------
Planck Collaboration (2020), A&A 641, A11 (2018 XI: polarized dust power spectra);
Tucci & Toffolatti (2012), Adv. Astron. 2012, 624987 (polarization of extragalactic radio sources);
Fixsen (2009), ApJ 707, 916 (T_CMB).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .config import ListOf, Number, resolve
from .errors import ConfigError
from .geometry import ARCMIN, FlatSkyGeometry

T_CMB_K = 2.7255
"""CMB temperature, K (Fixsen 2009)."""

_H, _K_B, _C = 6.62607015e-34, 1.380649e-23, 299792458.0  # J s, J/K, m/s (SI, exact)
_JY = 1e-26  # W m^-2 Hz^-1

SCHEMA = {
    "sources": {
        "per_deg2": Number(0.0, min=0, doc="mean number of polarized point sources per square degree (0: none)"),
        "flux_mjy": ListOf(Number(gt=0), [1.0, 5.0], min_len=2, max_len=2,
                           doc="[min, max] flux of the sources, mJy (max: the masking threshold)"),
        "slope": Number(2.0, gt=0, doc="slope gamma of the source counts dN/dS ~ S^-gamma"),
        "pol_fraction": Number(0.03, min=0, max=1, doc="polarization fraction of every source"),
        "frequency_ghz": Number(150.0, gt=0, doc="observing frequency, GHz (flux to CMB temperature)"),
    },
    "dust": {
        "d80_ee_uk2": Number(0.0, min=0, doc="D_l^EE of the dust-like residual at l = 80, uK^2 (0: none)"),
        "alpha": Number(-2.42, doc="power-law index of C_l of the dust-like residual"),
        "bb_over_ee": Number(0.5, min=0, doc="ratio of its BB to its EE power"),
    },
}
"""The ``foregrounds`` section of :data:`deepcmb.simulate.SCHEMA` (defaults: none)."""


def planck_derivative(frequency_ghz: float) -> float:
    """:math:`\\partial B_\\nu / \\partial T` at :data:`T_CMB_K`, Jy sr⁻¹ µK⁻¹ (module docstring)."""
    nu = frequency_ghz * 1e9
    x = _H * nu / (_K_B * T_CMB_K)
    return 2 * _K_B * nu**2 / _C**2 * x**2 * np.exp(x) / np.expm1(x) ** 2 / _JY * 1e-6


@dataclass(frozen=True)
class Foregrounds:
    """Point-source and dust-like residuals of simulated maps (the module docstring has the formulas).

    Build one with :meth:`from_config`; the attributes are the leaves of :data:`SCHEMA`.

    Attributes
    ----------
    per_deg2 : float
        Source density, per deg².
    flux_mjy : tuple of float
        ``(S_min, S_max)``, mJy.
    slope, pol_fraction, frequency_ghz : float
        :math:`\\gamma`, :math:`p` and :math:`\\nu` (GHz).
    d80_ee_uk2, alpha, bb_over_ee : float
        :math:`D_{80}` (µK²), :math:`\\alpha` and :math:`r_{BE}` of the dust-like residual.
    """

    per_deg2: float
    flux_mjy: tuple
    slope: float
    pol_fraction: float
    frequency_ghz: float
    d80_ee_uk2: float
    alpha: float
    bb_over_ee: float

    def __post_init__(self):
        lo, hi = self.flux_mjy
        if not lo < hi:
            raise ConfigError(f"foregrounds.sources.flux_mjy: expected [min, max] with min < max, got [{lo}, {hi}]")

    @classmethod
    def from_config(cls, section: dict | None = None) -> Foregrounds:
        """The foregrounds of a ``foregrounds`` config section (partial or resolved).

        Raises
        ------
        ConfigError
            For a bad key or value, naming it (``foregrounds.sources.flux_mjy: ...``).
        """
        cfg = resolve(section, SCHEMA, prefix="foregrounds.")
        flat = {**cfg["sources"], **cfg["dust"]}
        flat["flux_mjy"] = tuple(flat["flux_mjy"])
        return cls(**{f.name: flat[f.name] for f in fields(cls)})

    @property
    def any(self) -> bool:
        """Whether the maps get any residual."""
        return self.per_deg2 > 0 or self.d80_ee_uk2 > 0

    def fluxes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` fluxes (mJy) from :math:`dN/dS \\propto S^{-\\gamma}` on ``flux_mjy``, by inverting the
        cumulative distribution."""
        lo, hi = self.flux_mjy
        u = rng.random(n)
        if np.isclose(self.slope, 1.0):
            return lo * (hi / lo) ** u
        a = 1.0 - self.slope
        return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)

    def sources_tqu(self, box: FlatSkyGeometry, rng: np.random.Generator) -> np.ndarray:
        """The point sources of one map on its periodic box.

        Returns
        -------
        ndarray, shape (3,) + box.shape
            T, Q, U in thermodynamic µK (zeros without sources).
        """
        tqu = np.zeros((3,) + box.shape)
        area_deg2 = np.prod(box.shape) * (box.pixel_arcmin / 60.0) ** 2
        n = rng.poisson(self.per_deg2 * area_deg2) if self.per_deg2 > 0 else 0
        if n == 0:
            return tqu
        iy, ix = rng.integers(0, box.shape[0], n), rng.integers(0, box.shape[1], n)
        omega = (box.pixel_arcmin * ARCMIN) ** 2
        dt = self.fluxes(n, rng) * 1e-3 / (omega * planck_derivative(self.frequency_ghz))
        chi = rng.uniform(0.0, np.pi, n)
        np.add.at(tqu[0], (iy, ix), dt)
        np.add.at(tqu[1], (iy, ix), self.pol_fraction * dt * np.cos(2 * chi))
        np.add.at(tqu[2], (iy, ix), self.pol_fraction * dt * np.sin(2 * chi))
        return tqu

    def dust_cl(self, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:math:`(C_\\ell^{EE}, C_\\ell^{BB})` of the dust-like residual, µK² sr (0 at :math:`\\ell = 0`)."""
        ell = np.asarray(ell, float)
        with np.errstate(divide="ignore"):
            ee = np.where(ell > 0, 2 * np.pi * self.d80_ee_uk2 / (80.0 * 81.0) * (ell / 80.0) ** self.alpha, 0.0)
        return ee, self.bb_over_ee * ee

    def dust_qu(self, box: FlatSkyGeometry, rng: np.random.Generator) -> np.ndarray:
        """The dust-like residual of one map on its periodic box.

        Returns
        -------
        ndarray, shape (2,) + box.shape
            Q, U in µK.
        """
        ee, bb = self.dust_cl(box.ell())
        # rfft of unit white noise has <|w|^2> = N_pix; times sqrt(C_l) x pixel side, the modes have the
        # power of a field of spectrum C_l on the patch (<|f(l)|^2> = area C_l, the map2fourier convention)
        white = np.fft.rfft2(rng.standard_normal((2,) + box.shape))
        q, u = box.eb2qu(white[0] * np.sqrt(ee) * box.pixel_rad, white[1] * np.sqrt(bb) * box.pixel_rad)
        return np.stack([q, u])

    def tqu(self, box: FlatSkyGeometry, sources_rng: np.random.Generator,
            dust_rng: np.random.Generator) -> np.ndarray:
        """Both residuals of one map on its box: shape ``(3,) + box.shape``, µK (T, Q, U)."""
        out = self.sources_tqu(box, sources_rng)
        if self.d80_ee_uk2 > 0:
            out[1:] += self.dust_qu(box, dust_rng)
        return out

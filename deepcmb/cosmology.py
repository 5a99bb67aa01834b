"""Cosmological parameters, their sampling, and CMB spectra from CAMB.

CAMB runs once per cosmology and its results are cached on disk (see :func:`compute_spectra`), so a
50,000-map simulation over a few hundred cosmologies costs a few hundred CAMB calls, each made once.

Spectra are plain :math:`C_\\ell` (no :math:`\\ell(\\ell+1)/2\\pi`), temperature and polarization in
µK², the lensing potential dimensionless.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .streams import silenced

PARAM_NAMES = ("H0", "ombh2", "omch2", "As", "ns", "tau", "mnu", "Alens")
"""Parameters a simulation may vary. Units: H0 in km/s/Mpc, mnu in eV, the rest dimensionless."""

PLANCK2018 = {
    "H0": 67.32,
    "ombh2": 0.022383,
    "omch2": 0.12011,
    "As": 2.101e-9,
    "ns": 0.96605,
    "tau": 0.0543,
    "mnu": 0.06,
    "Alens": 1.0,
}
"""Planck 2018 TT,TE,EE+lowE+lensing best fit (Planck 2018 VI, Table 2), the fiducial cosmology."""

PARAM_BOUNDS = {
    "H0": (40.0, 100.0),
    "ombh2": (0.005, 0.1),
    "omch2": (0.001, 0.99),
    "As": (5e-10, 5e-9),
    "ns": (0.8, 1.2),
    "tau": (0.001, 5.0),
    "mnu": (0.0, 3.0),
    "Alens": (0.0, 10.0),
}
"""Hard limits outside which a parameter is refused before CAMB is called."""

SPECTRA_VERSION = 2
"""Bump when :func:`compute_spectra` changes what it computes, to invalidate on-disk caches."""


def check_params(params: dict, where: str = "cosmology") -> dict:
    """Validate one cosmology.

    Parameters
    ----------
    params : dict
        Parameter name -> value; names from :data:`PARAM_NAMES`.
    where : str
        Dotted config path used in error messages.

    Returns
    -------
    dict
        A full parameter set: the fiducial values updated with ``params``, all floats.

    Raises
    ------
    ConfigError
        For an unknown name or a value outside :data:`PARAM_BOUNDS`.
    """
    full = dict(PLANCK2018)
    for name, value in params.items():
        if name not in PARAM_NAMES:
            raise ConfigError(f"{where}.{name}: unknown cosmological parameter (known: {', '.join(PARAM_NAMES)})")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}") from None
        lo, hi = PARAM_BOUNDS[name]
        if not (lo <= value <= hi):
            raise ConfigError(f"{where}.{name}: {value} outside the allowed range [{lo}, {hi}]")
        full[name] = value
    return full


def latin_hypercube(ranges: dict, n: int, rng: np.random.Generator) -> list[dict]:
    """Latin-hypercube sample of ``n`` points inside the boxes ``ranges``.

    Parameters
    ----------
    ranges : dict
        Parameter name -> ``(low, high)``.
    n : int
        Number of points.
    rng : numpy.random.Generator
        Random stream.

    Returns
    -------
    list of dict
        ``n`` parameter dicts; along each parameter every one of the ``n`` equal-width strata holds
        exactly one point.
    """
    names = sorted(ranges)
    out = [dict() for _ in range(n)]
    for name in names:
        lo, hi = ranges[name]
        u = (rng.permutation(n) + rng.uniform(size=n)) / n
        for i in range(n):
            out[i][name] = lo + (hi - lo) * u[i]
    return out


def grid(values: dict) -> list[dict]:
    """Cartesian product of parameter values.

    Parameters
    ----------
    values : dict
        Parameter name -> list of values.

    Returns
    -------
    list of dict
        One dict per grid point, the last-named parameter varying fastest.
    """
    names = list(values)
    points = [dict()]
    for name in names:
        points = [dict(p, **{name: v}) for p in points for v in values[name]]
    return points


@dataclass(frozen=True)
class CMBSpectra:
    """CMB and lensing spectra of one cosmology, tabulated at ``l = 0 .. lmax``.

    Attributes
    ----------
    params : dict
        The full parameter set.
    unlensed : ndarray, shape (4, lmax + 1)
        Unlensed ``TT, EE, BB, TE`` in µK² (BB is zero: scalar modes only).
    lensed : ndarray, shape (4, lmax + 1)
        Lensed ``TT, EE, BB, TE`` in µK², computed by CAMB with the lensing power ``clpp``.
    clpp : ndarray, shape (lmax + 1,)
        Lensing-potential power :math:`C_L^{\\phi\\phi}` including the ``Alens`` scaling, i.e. the
        spectrum that lenses ``lensed``; phi maps are drawn from it.
    gradient : ndarray, shape (4, lmax + 1)
        Lensed gradient spectra :math:`C^{T\\nabla T}, C^{E\\nabla E}, C^{B\\nabla B}, C^{T\\nabla E}`
        in µK² (Lewis, Challinor & Hanson 2011): the correlation of the lensed fields with their
        gradients, which sets the response of the lensed CMB to a lens. They equal the lensed
        spectra to < 1 % below l ~ 1500 but not in the damping tail (TT: 4 % at l = 2500, 14 % at
        3500), so quadratic estimators normalise with them.
    """

    params: dict
    unlensed: np.ndarray
    lensed: np.ndarray
    clpp: np.ndarray
    gradient: np.ndarray

    @property
    def lmax(self) -> int:
        return self.clpp.size - 1

    @property
    def ell(self) -> np.ndarray:
        return np.arange(self.lmax + 1, dtype=float)

    @property
    def clkk(self) -> np.ndarray:
        """Convergence power :math:`C_L^{\\kappa\\kappa} = [L(L+1)]^2 C_L^{\\phi\\phi} / 4`."""
        ell = self.ell
        return (ell * (ell + 1)) ** 2 * self.clpp / 4.0

    def unlensed_cl(self, name: str) -> np.ndarray:
        """Unlensed spectrum ``'TT' | 'EE' | 'BB' | 'TE'``."""
        return self.unlensed[_INDEX[name]]

    def lensed_cl(self, name: str) -> np.ndarray:
        """Lensed spectrum ``'TT' | 'EE' | 'BB' | 'TE'``."""
        return self.lensed[_INDEX[name]]


_INDEX = {"TT": 0, "EE": 1, "BB": 2, "TE": 3}


def _cache_dir(cache_dir):
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("DEEPCMB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "deepcmb")
    return Path(root) / "camb"


def _cache_key(params, lmax, accuracy):
    blob = json.dumps(
        {"params": params, "lmax": lmax, "acc": accuracy, "v": SPECTRA_VERSION, "camb": _camb_version()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _camb_version():
    import camb

    return camb.__version__


def compute_spectra(params: dict, lmax: int = 5000, lens_potential_accuracy: int = 1,
                    cache_dir: str | Path | None = None, use_cache: bool = True) -> CMBSpectra:
    """CMB spectra of one cosmology from CAMB, cached on disk.

    Parameters
    ----------
    params : dict
        Cosmological parameters (any subset of :data:`PARAM_NAMES`; the rest are fiducial).
    lmax : int
        Highest multipole of the returned spectra (at least 5000 for the lensing power).
    lens_potential_accuracy : int
        CAMB's ``lens_potential_accuracy`` (1 is enough for ``lmax`` up to ~5000 at 0.1%).
    cache_dir : str or Path, optional
        Cache folder; default ``$DEEPCMB_CACHE/camb`` or ``~/.cache/deepcmb/camb``.
    use_cache : bool
        Read and write the cache.

    Returns
    -------
    CMBSpectra

    Raises
    ------
    ConfigError
        If a parameter is out of range or CAMB rejects the cosmology.
    """
    full = check_params(params)
    key = _cache_key(full, int(lmax), int(lens_potential_accuracy))
    path = _cache_dir(cache_dir) / f"{key}.npz"
    if use_cache and path.exists():
        try:
            with np.load(path) as f:
                return CMBSpectra(full, f["unlensed"], f["lensed"], f["clpp"], f["gradient"])
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache entry is recomputed and overwritten below
    spectra = _run_camb(full, int(lmax), int(lens_potential_accuracy))
    if use_cache:
        # written under a name of this process (workers share the cache), then renamed: a cache entry is
        # always whole (the physics layer does not import deepcmb.io, whose atomic writes are for outputs)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, unlensed=spectra.unlensed, lensed=spectra.lensed, clpp=spectra.clpp,
                     gradient=spectra.gradient)
            os.replace(tmp, path)
        except OSError:  # a full disk or a read-only cache folder: the spectra are not cached, that is all
            tmp.unlink(missing_ok=True)
    return spectra


def _run_camb(full, lmax, accuracy):
    import camb

    described = ", ".join(f"{k}={v:g}" for k, v in full.items())
    try:
        # CAMB reports failures as exceptions too; its Fortran chatter would break one-line errors
        with silenced(1, 2):
            pars = camb.set_params(
                H0=full["H0"], ombh2=full["ombh2"], omch2=full["omch2"], mnu=full["mnu"], tau=full["tau"],
                As=full["As"], ns=full["ns"], Alens=full["Alens"], lmax=lmax + 500,
                lens_potential_accuracy=accuracy, WantTensors=False,
            )
            results = camb.get_results(pars)
            cls = results.get_cmb_power_spectra(pars, CMB_unit="muK", raw_cl=True, lmax=lmax)
            grad = results.get_lensed_gradient_cls(lmax=lmax, CMB_unit="muK", raw_cl=True)
    except Exception as exc:  # CAMB raises several exception types for unphysical input
        reason = " ".join(str(exc).split())
        raise ConfigError(f"cosmology: CAMB rejected ({described}): {reason}") from None
    unlensed = np.ascontiguousarray(cls["unlensed_scalar"][: lmax + 1, :4].T)
    lensed = np.ascontiguousarray(cls["lensed_scalar"][: lmax + 1, :4].T)
    # With raw_cl=True CAMB returns C_L^pp itself, already scaled by Alens.
    clpp = np.ascontiguousarray(cls["lens_potential"][: lmax + 1, 0])
    # CAMB orders the gradient spectra TgradT, EgradE, BgradB, PPperp, TgradE, ...
    gradient = np.ascontiguousarray(grad[: lmax + 1, [0, 1, 2, 4]].T)
    if not all(np.all(np.isfinite(a)) for a in (unlensed, lensed, clpp, gradient)):
        raise ConfigError(f"cosmology: CAMB returned non-finite spectra for ({described})")
    return CMBSpectra(full, unlensed, lensed, clpp, gradient)

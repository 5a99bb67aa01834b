"""Estimate, normalisation and Gaussian noise of declared quadratic estimators, by FFT convolutions.

Every quantity is a sum of convolutions of separable legs (see :mod:`deepcmb.qe.estimators`),

.. math:: \\int \\frac{d^2 l_1}{(2\\pi)^2}\\, a(\\mathbf{l}_1)\\, b(\\mathbf{L} - \\mathbf{l}_1)
          = \\mathcal{F}\\big[\\mathcal{F}^{-1}[a]\\; \\mathcal{F}^{-1}[b]\\big](\\mathbf{L}),

computed with the transforms of :mod:`deepcmb.geometry` (on a grid the integral is
:math:`A^{-1}\\sum_{\\mathbf{l}_1}`, with :math:`\\mathbf{L} - \\mathbf{l}_1` wrapped onto the grid;
periodic, pixel-sampled lensing couples modes in exactly this circular way). For an estimator
:math:`\\alpha` on fields ``(X, Y)`` with weight
:math:`G_\\alpha(\\mathbf{l}_1, \\mathbf{l}_2) = w_\\alpha f^{XY}_w(\\mathbf{l}_1, \\mathbf{l}_2)
F^X_{l_1} F^Y_{l_2}` (:math:`f_w`: the response evaluated with the weight spectra, :math:`w_\\alpha`:
1/2 for X = Y, :math:`F`: the inverse-variance filters of :mod:`deepcmb.qe.filtering`):

* unnormalised estimate :math:`q_\\alpha(\\mathbf{L}) = \\int G_\\alpha\\, X_d(\\mathbf{l}_1)
  Y_d(\\mathbf{l}_2)`;
* response :math:`R_\\alpha(\\mathbf{L}) = \\int G_\\alpha\\, f^{XY}_r` (:math:`f_r`: the response with
  the response spectra), so :math:`\\hat\\phi_\\alpha = q_\\alpha / R_\\alpha` is unbiased;
* Gaussian noise covariance of two estimators ``α = (X, Y)``, ``β = (Z, W)``,

  .. math:: \\langle q_\\alpha(\\mathbf{L}) q^*_\\beta(\\mathbf{L}) \\rangle / A = \\int G_\\alpha(\\mathbf{l}_1,
            \\mathbf{l}_2) \\big[G^*_\\beta(\\mathbf{l}_1, \\mathbf{l}_2) C^{XZ}_{l_1} C^{YW}_{l_2}
            + G^*_\\beta(\\mathbf{l}_2, \\mathbf{l}_1) C^{XW}_{l_1} C^{YZ}_{l_2}\\big],

  with total (beam-deconvolved) spectra :math:`C`, and
  :math:`N^{(0)}_{\\alpha\\beta} = \\langle q_\\alpha q_\\beta^* \\rangle / (A R_\\alpha R_\\beta)`.

Products of declared terms multiply their legs' factors; each distinct product of factors is
transformed once (a cache keyed by the multiset of factors), and all terms sharing the same
:math:`\\mathbf{L}` factor are summed in real space before one forward transform. Every leg is a
Hermitian function of :math:`\\mathbf{l}` (real spectra, :math:`\\cos 2\\varphi`, :math:`\\sin
2\\varphi`, :math:`i l_j`), so all maps are real and real FFTs suffice.

References
----------
Hu & Okamoto (2002), ApJ 574, 566; Hanson, Challinor, Efstathiou & Bielewicz (2011), PRD 83,
043005 (separable flat-sky estimators by FFT).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import ducc0
import numpy as np

from .estimators import ESTIMATORS
from .filtering import pair_name

if TYPE_CHECKING:
    from ..geometry import FlatSkyGeometry
    from .estimators import Leg


class FourierFactors:
    """The elementary factors legs are built from, as arrays on the rfft grid.

    Parameters
    ----------
    geom : FlatSkyGeometry
    filters : Filters
        Inverse-variance filters and total spectra (:func:`~deepcmb.qe.filtering.inverse_variance_filters`).
    weight_cls, response_cls : dict
        ``'TT', 'EE', 'BB', 'TE'`` -> spectra on the grid used in the weights and in the response
        (:func:`~deepcmb.qe.filtering.grid_spectra`).
    nthreads : int
        Threads for the FFTs.

    Notes
    -----
    A factor is a tuple ``(kind, value)``:

    ``('w', 'TT')`` weight spectrum, ``('r', 'TT')`` response spectrum, ``('F', 'T')`` filter,
    ``('C', 'TE')`` total spectrum, ``('a', 'c' | 's')`` :math:`\\cos/\\sin 2\\varphi_l`,
    ``('g', 0 | 1)`` :math:`i l_x` / :math:`i l_y`.
    """

    def __init__(self, geom, filters, weight_cls, response_cls, nthreads=1):
        self.geom = geom
        self.nthreads = int(nthreads)
        lx, ly = geom.lxly()
        c2, s2 = geom.cos2phi_sin2phi()
        self._arrays = {("a", "c"): c2, ("a", "s"): s2, ("g", 0): 1j * lx, ("g", 1): 1j * ly}
        for name, arr in weight_cls.items():
            self._arrays[("w", name)] = arr
        for name, arr in response_cls.items():
            self._arrays[("r", name)] = arr
        for field, arr in filters.inverse.items():
            self._arrays[("F", field)] = arr
        for name, arr in filters.total.items():
            self._arrays[("C", name)] = arr
        self._lfactor = {0: -1j * lx, 1: -1j * ly}

    def product(self, factors: Iterable[tuple]) -> np.ndarray:
        """Product of the arrays of ``factors`` (an iterable of factor tuples) on the rfft grid."""
        out = None
        for f in factors:
            a = self._arrays[f]
            out = a if out is None else out * a
        return np.ones(self.geom.fourier_shape()) if out is None else out

    def lfactor(self, key: Iterable[tuple[int, bool]]) -> np.ndarray | float:
        """Product of :math:`-i L_j` (or its conjugate :math:`+i L_j`) over ``key = ((j, conj), ...)``."""
        out = 1.0
        for j, conj in key:
            out = out * (np.conj(self._lfactor[j]) if conj else self._lfactor[j])
        return out

    def to_map(self, f: np.ndarray) -> np.ndarray:
        """Inverse transform (geometry convention) of Hermitian rfft-grid modes ``(..., ny, nx//2+1)`` to real maps."""
        return to_map(self.geom, f, self.nthreads)

    def to_fourier(self, m: np.ndarray) -> np.ndarray:
        """Forward transform (geometry convention) of real maps ``(..., ny, nx)``."""
        return to_fourier(self.geom, m, self.nthreads)


def _buffer(work, name, shape, dtype):
    """A reusable work array (writing into fresh memory costs page faults; reuse is ~2x faster)."""
    if work is None:
        return np.empty(shape, dtype=dtype)
    buf = work.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != np.dtype(dtype):
        buf = work[name] = np.empty(shape, dtype=dtype)  # one buffer per name: memory stays bounded
    return buf


def to_map(geom: FlatSkyGeometry, f: np.ndarray, nthreads: int = 1, scaled: bool = True, work: dict | None = None,
           name: str = "map", overwrite: bool = False) -> np.ndarray:
    """``geom.fourier2map`` with ``ducc0.fft`` (keeps single precision; preallocated output).

    ``scaled=False`` omits the constant factor ``1 / (N_pix dx^2)`` (folded in by the caller);
    ``work`` (a dict) holds reusable output buffers: the result is then overwritten by the next
    call with the same ``name``; ``overwrite=True`` lets the transform destroy ``f``.
    """
    f = np.asarray(f)
    if f.dtype not in (np.complex64, np.complex128):
        f = f.astype(np.complex128)
    rdtype = np.float32 if f.dtype == np.complex64 else np.float64
    out = _buffer(work, name, f.shape[:-2] + geom.shape, rdtype)
    ducc0.fft.c2r(f, axes=(-2, -1), lastsize=geom.shape[1], forward=False, inorm=0, out=out, nthreads=nthreads,
                  allow_overwriting_input=bool(overwrite))
    if scaled:
        out *= 1.0 / (geom.shape[0] * geom.shape[1] * geom.pixel_rad**2)
    return out


def to_fourier(geom: FlatSkyGeometry, m: np.ndarray, nthreads: int = 1, scaled: bool = True, work: dict | None = None,
               name: str = "fourier") -> np.ndarray:
    """``geom.map2fourier`` with ``ducc0.fft`` (keeps single precision; preallocated output).

    ``scaled=False`` omits the constant factor ``dx^2`` (folded in by the caller); see
    :func:`to_map` for ``work``.
    """
    m = np.asarray(m)
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float64)
    cdtype = np.complex64 if m.dtype == np.float32 else np.complex128
    out = _buffer(work, name, m.shape[:-2] + geom.fourier_shape(), cdtype)
    ducc0.fft.r2c(m, axes=(-2, -1), forward=True, inorm=0, out=out, nthreads=nthreads)
    if scaled:
        out *= geom.pixel_rad**2
    return out


def leg_factors(leg: Leg, spectra_kind: str, filtered: bool) -> tuple[tuple, int]:
    """Factor tuples of one declared leg.

    Parameters
    ----------
    leg : Leg
    spectra_kind : {'w', 'r'}
        Evaluate the leg's spectrum with the weight (``'w'``) or response (``'r'``) spectra.
    filtered : bool
        Include the inverse-variance filter of the leg's field.

    Returns
    -------
    factors : tuple
        Factor tuples (see :class:`FourierFactors`).
    ngrad : int
        Number of :math:`i l_j` factors (its parity gives the sign under complex conjugation).
    """
    out = []
    if filtered:
        out.append(("F", leg.field))
    if leg.cl is not None:
        out.append((spectra_kind, leg.cl))
    if leg.angle != "1":
        out.append(("a", leg.angle))
    if leg.grad is not None:
        out.append(("g", leg.grad))
    return tuple(out), int(leg.grad is not None)


def _key(*parts):
    return tuple(sorted(sum(parts, ())))


def convolve_sum(factors: FourierFactors, items: Iterable[tuple[float, tuple, tuple, tuple]]) -> np.ndarray:
    """Evaluate :math:`\\sum_i c_i \\Lambda_i(\\mathbf{L}) \\int a_i(\\mathbf{l}_1) b_i(\\mathbf{L}-\\mathbf{l}_1)`.

    Parameters
    ----------
    factors : FourierFactors
    items : iterable of (coef, key1, key2, lkey)
        ``coef`` real; ``key1``, ``key2`` sorted factor tuples of :math:`a_i` and :math:`b_i`;
        ``lkey`` the :math:`\\Lambda_i` key of :meth:`FourierFactors.lfactor`.

    Returns
    -------
    ndarray, complex, shape ``geom.fourier_shape()``
    """
    maps, groups = {}, {}
    for coef, k1, k2, lkey in items:
        for k in (k1, k2):
            if k not in maps:
                maps[k] = factors.to_map(factors.product(k))
        term = coef * maps[k1] * maps[k2]
        if lkey in groups:
            groups[lkey] += term
        else:
            groups[lkey] = term
    out = np.zeros(factors.geom.fourier_shape(), dtype=complex)
    for lkey, m in groups.items():
        out += factors.lfactor(lkey) * factors.to_fourier(m)
    return out


def response_items(name: str) -> list[tuple[float, tuple, tuple, tuple]]:
    """Separable items of the response :math:`R_\\alpha = \\int G_\\alpha f^{XY}_r` of estimator ``name``."""
    est = ESTIMATORS[name]
    items = []
    for t in est.terms:
        a_t, _ = leg_factors(t.leg1, "w", True)
        b_t, _ = leg_factors(t.leg2, "w", True)
        for u in est.terms:
            a_u, _ = leg_factors(u.leg1, "r", False)
            b_u, _ = leg_factors(u.leg2, "r", False)
            items.append((est.weight_factor * t.coef * u.coef, _key(a_t, a_u), _key(b_t, b_u),
                          tuple(sorted(((t.j, False), (u.j, False))))))
    return items


def response(factors: FourierFactors, name: str) -> np.ndarray:
    """Normalisation kernel :math:`R_\\alpha(\\mathbf{L})` of estimator ``name``.

    Returns
    -------
    ndarray, shape ``geom.fourier_shape()``
        :math:`R_\\alpha`; the normalised estimate is :math:`\\hat\\phi = q / R`. The imaginary part
        vanishes analytically and is dropped.
    """
    return convolve_sum(factors, response_items(name)).real


def noise_items(name_a: str, name_b: str) -> list[tuple[float, tuple, tuple, tuple]]:
    """Separable items of the unnormalised Gaussian noise covariance of estimators ``a`` and ``b``."""
    ea, eb = ESTIMATORS[name_a], ESTIMATORS[name_b]
    items = []
    coef0 = ea.weight_factor * eb.weight_factor
    for t in ea.terms:
        a_t, _ = leg_factors(t.leg1, "w", True)
        b_t, _ = leg_factors(t.leg2, "w", True)
        for u in eb.terms:
            a_u, ga = leg_factors(u.leg1, "w", True)
            b_u, gb = leg_factors(u.leg2, "w", True)
            sign = (-1.0) ** (ga + gb)  # complex conjugate of the i l_j factors of G_b
            coef = coef0 * t.coef * u.coef * sign
            lkey = tuple(sorted(((t.j, False), (u.j, True))))
            # <X Z*> <Y W*>
            xz, yw = pair_name(ea.x, eb.x), pair_name(ea.y, eb.y)
            if xz not in ("TB", "EB") and yw not in ("TB", "EB"):
                items.append((coef, _key(a_t, a_u, (("C", xz),)), _key(b_t, b_u, (("C", yw),)), lkey))
            # <X W*> <Y Z*>
            xw, yz = pair_name(ea.x, eb.y), pair_name(ea.y, eb.x)
            if xw not in ("TB", "EB") and yz not in ("TB", "EB"):
                items.append((coef, _key(a_t, b_u, (("C", xw),)), _key(b_t, a_u, (("C", yz),)), lkey))
    return items


def noise_covariance(factors: FourierFactors, names: Sequence[str]) -> np.ndarray:
    """Unnormalised Gaussian noise covariance :math:`\\langle q_\\alpha q_\\beta^*\\rangle / A`.

    Parameters
    ----------
    factors : FourierFactors
    names : sequence of str
        Estimator names.

    Returns
    -------
    ndarray, shape (n, n) + ``geom.fourier_shape()``
        Real, symmetric in the first two axes (imaginary parts vanish by parity and are dropped).
    """
    n = len(names)
    out = np.zeros((n, n) + factors.geom.fourier_shape())
    for i in range(n):
        for k in range(i, n):
            items = noise_items(names[i], names[k])
            if items:
                out[i, k] = convolve_sum(factors, items).real
                out[k, i] = out[i, k]
    return out


class EstimatePlan:
    """Precomputed linear algebra of the map estimate of one or several declared estimators.

    The plan turns the Fourier modes of observed ``T, Q, U`` maps into the unnormalised estimates'
    gradient components: for estimator :math:`\\alpha` and :math:`j \\in \\{x, y\\}`,
    :math:`v_{\\alpha j}(\\mathbf{x}) = w_\\alpha \\sum_t c_t\\, \\mathcal{F}^{-1}[a_t \\bar X]\\,
    \\mathcal{F}^{-1}[b_t \\bar Y]` over the terms with :math:`j_t = j`, so that
    :math:`q_\\alpha(\\mathbf{L}) = \\sum_j (-i L_j)\\, \\mathcal{F}[v_{\\alpha j}]`. Each distinct
    filtered leg is transformed once; symmetric products are merged. FFTs use ``ducc0.fft`` with
    preallocated outputs.

    Parameters
    ----------
    factors : FourierFactors
    filters : Filters
    names : sequence of str
        Estimator names.
    kernels : ndarray, complex, shape (len(names), 2) + fourier_shape
        Output kernel :math:`K_{\\alpha j}(\\mathbf{L})` multiplying :math:`\\mathcal{F}[v_{\\alpha j}]`;
        e.g. :math:`(-i L_j)\\, W_\\alpha / R_\\alpha` for a normalised (minimum-variance) estimate.
    precision : {'double', 'single'}
        Floating-point precision of the map-level arithmetic and FFTs (the setup is always double).
    """

    def __init__(self, factors, filters, names, kernels, precision="double"):
        geom = factors.geom
        self.factors = factors
        self.names = tuple(names)
        if precision not in ("double", "single"):
            raise ValueError(f"precision: expected 'double' or 'single', got {precision!r}")
        self.rdtype = np.float64 if precision == "double" else np.float32
        self.cdtype = np.complex128 if precision == "double" else np.complex64
        c2, s2 = geom.cos2phi_sin2phi()
        # 1 / (N_pix dx^2) of the inverse transform of the legs is folded into the field coefficients
        norm = self._norm = 1.0 / (geom.shape[0] * geom.shape[1] * geom.pixel_rad**2)
        inv_beam = norm * np.where(filters.mask, 1.0 / np.where(filters.mask, filters.beam, 1.0), 0.0)
        # filtered fields from the (T, Q, U) modes: T = F_T T / B; E = F_E (c Q + s U) / B; B = F_B (-s Q + c U) / B
        self._field_coef = {
            "T": (inv_beam * filters.inverse["T"],),
            "E": (inv_beam * filters.inverse["E"] * c2, inv_beam * filters.inverse["E"] * s2),
            "B": (-inv_beam * filters.inverse["B"] * s2, inv_beam * filters.inverse["B"] * c2),
        }
        legs, merged, ordered = {}, {}, {}
        for a, name in enumerate(self.names):
            est = ESTIMATORS[name]
            for t in est.terms:
                ids = []
                for leg in (t.leg1, t.leg2):
                    if leg not in legs:
                        legs[leg] = len(legs)
                    ids.append(legs[leg])
                c = est.weight_factor * t.coef
                key = (a * 2 + t.j, min(ids), max(ids))
                merged[key] = merged.get(key, 0.0) + c
                key = (a * 2 + t.j, ids[0], ids[1])
                ordered[key] = ordered.get(key, 0.0) + c
        self._legs = []
        for leg in legs:  # insertion order = index
            fac, _ = leg_factors(leg, "w", False)
            self._legs.append((leg.field, factors.product(fac).astype(self.cdtype)))
        self._fields = sorted({leg.field for leg in legs})
        self._field_coef = {k: tuple(c.astype(self.cdtype) for c in v) for k, v in self._field_coef.items()
                            if k in self._fields}
        self._merged = sorted((o, i, k, c) for (o, i, k), c in merged.items() if c != 0.0)
        self._ordered = sorted((o, i, k, c) for (o, i, k), c in ordered.items() if c != 0.0)
        # dx^2 of the forward transform and the input transforms' dx^2 are folded into the kernels
        kernels = np.asarray(kernels).reshape((2 * len(self.names),) + geom.fourier_shape())
        self._kernels = (kernels * geom.pixel_rad**2).astype(self.cdtype)
        self.nlegs = len(legs)
        self.nthreads = factors.nthreads
        self._work = {}  # reusable buffers (the plan is not thread-safe)

    def _leg_maps(self, tqu, name="legmaps"):
        """Real-space maps of all filtered legs, shape (N, nlegs, ny, nx)."""
        geom = self.factors.geom
        first = next(f for f in tqu if f is not None)
        n = first.shape[0]
        tqu = [None if f is None else np.asarray(f, dtype=self.cdtype) for f in tqu]
        bar, shape = {}, (n,) + geom.fourier_shape()
        for field, coef in self._field_coef.items():
            out = bar[field] = _buffer(self._work, name + field, shape, self.cdtype)
            if field == "T":
                np.multiply(coef[0], tqu[0], out=out)
            else:
                tmp = _buffer(self._work, "bar_tmp", shape, self.cdtype)
                np.multiply(coef[0], tqu[1], out=out)
                out += np.multiply(coef[1], tqu[2], out=tmp)
        return self._legs_of(bar, n, name)

    def _legs_of(self, bar, n, name):
        """Real-space maps of all legs of the filtered fields ``bar`` (field -> ``(N,) + fourier_shape``,
        with the inverse transform's constant folded in), shape (N, nlegs, ny, nx)."""
        geom = self.factors.geom
        legs = _buffer(self._work, "legs", (n, self.nlegs) + geom.fourier_shape(), self.cdtype)
        for i, (field, w) in enumerate(self._legs):
            np.multiply(w, bar[field], out=legs[:, i])
        return to_map(geom, legs, self.nthreads, scaled=False, work=self._work, name=name, overwrite=True)

    def _filtered_legs(self, filtered, name):
        missing = [k for k in self._fields if k not in filtered]
        if missing:
            raise ValueError(f"filtered fields: missing {missing}")
        bar = {k: np.asarray(filtered[k]).astype(self.cdtype) * self._norm for k in self._fields}
        return self._legs_of(bar, next(iter(bar.values())).shape[0], name)

    def __call__(self, tqu_fourier, tqu_fourier2=None):
        """Apply the plan.

        Parameters
        ----------
        tqu_fourier : sequence of 3 arrays or None, each of shape ``(N,) + fourier_shape``
            Fourier modes of the observed T, Q, U maps (None for a map not used).
        tqu_fourier2 : sequence of 3 arrays or None, optional
            A second data set for the bilinear estimate :math:`q[a, b]` (first legs from
            ``tqu_fourier``, second legs from this one), e.g. for Monte-Carlo N1 or RDN0.

        Returns
        -------
        ndarray, complex, shape ``(N,) + fourier_shape``
            :math:`\\sum_{\\alpha j} K_{\\alpha j} \\mathcal{F}[v_{\\alpha j}]`, in a work buffer that
            the next call overwrites (copy it to keep it).
        """
        la = self._leg_maps(tqu_fourier)
        if tqu_fourier2 is None:
            return self._combine(la, la, self._merged)
        return self._combine(la, self._leg_maps(tqu_fourier2, name="legmaps2"), self._ordered)

    def filtered(self, fields: dict[str, np.ndarray]) -> np.ndarray:
        """Apply the plan to fields filtered elsewhere instead of the diagonal filters of the plan.

        Parameters
        ----------
        fields : dict
            ``'T', 'E', 'B'`` (those the estimators read) -> filtered fields :math:`\\bar X(\\mathbf{l})`,
            complex, shape ``(N,) + fourier_shape``, in the convention of :mod:`deepcmb.geometry`; the
            diagonal filter of the plan gives :math:`\\bar X = F^X X_{\\rm obs} / B_l` (e.g. a
            :math:`C^{-1}` filter of masked maps, :mod:`deepcmb.qe.cinv`).

        Returns
        -------
        ndarray, complex, shape ``(N,) + fourier_shape``
            As :meth:`__call__` (a work buffer).
        """
        legs = self._filtered_legs(fields, "legmaps")
        return self._combine(legs, legs, self._merged)

    def _combine(self, la, lb, pairs):
        """Products of the leg maps ``la``, ``lb`` summed per output, transformed and weighted by the kernels."""
        geom = self.factors.geom
        n = la.shape[0]
        v = _buffer(self._work, "v", (n, self._kernels.shape[0]) + geom.shape, self.rdtype)
        tmp = _buffer(self._work, "tmp", (n,) + geom.shape, self.rdtype)
        started = set()
        for o, i, k, c in pairs:
            target = v[:, o] if o not in started else tmp
            np.multiply(la[:, i], lb[:, k], out=target)
            if c != 1.0:
                target *= c
            if o in started:
                v[:, o] += tmp
            started.add(o)
        for o in set(range(v.shape[1])) - started:
            v[:, o] = 0.0
        vf = to_fourier(geom, v, self.nthreads, scaled=False, work=self._work, name="vf")
        out = _buffer(self._work, "phi", (n,) + geom.fourier_shape(), self.cdtype)
        tmpf = _buffer(self._work, "phi_tmp", (n,) + geom.fourier_shape(), self.cdtype)
        np.multiply(self._kernels[0], vf[:, 0], out=out)
        for o in range(1, self._kernels.shape[0]):
            out += np.multiply(self._kernels[o], vf[:, o], out=tmpf)
        return out

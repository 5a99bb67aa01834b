"""The flat-sky lensing quadratic estimators, each declared once.

Every estimator is the lensing response function :math:`f^{XY}(\\mathbf{l}_1, \\mathbf{l}_2)` of a
pair of fields, defined by (flat sky, first order in :math:`\\phi`, :math:`\\mathbf{L} =
\\mathbf{l}_1 + \\mathbf{l}_2 \\neq 0`)

.. math:: \\langle X(\\mathbf{l}_1)\\, Y(\\mathbf{l}_2) \\rangle = f^{XY}(\\mathbf{l}_1, \\mathbf{l}_2)\\,
          \\phi(\\mathbf{L}),

written as a short sum of *separable* terms

.. math:: f^{XY}(\\mathbf{l}_1, \\mathbf{l}_2) = \\sum_t c_t\\; a_t(\\mathbf{l}_1)\\, b_t(\\mathbf{l}_2)\\,
          (-i L_{j_t}),

where each "leg" :math:`a_t, b_t` is a product of a spectrum :math:`C_l` (or 1), an angular factor
(1, :math:`\\cos 2\\varphi_l` or :math:`\\sin 2\\varphi_l`) and optionally a gradient factor
:math:`i l_j`, and :math:`j_t \\in \\{x, y\\}`. Because :math:`(i l_j)(-i L_j) = l_j L_j`, the dot
products :math:`\\mathbf{L}\\cdot\\mathbf{l}` of Hu & Okamoto (2002) become two terms each. The
declarations below are the only place the lensing physics enters: :mod:`deepcmb.qe.engine` derives
the estimate, its normalisation (response) and its Gaussian noise N0 from them by FFT convolutions,
and :mod:`deepcmb.qe.direct` evaluates them point by point as a check.

The response functions (Hu & Okamoto 2002, Table 1, in this package's polarization convention
``Q(l) + iU(l) = (E(l) + iB(l)) exp(2i phi_l)``, :math:`\\varphi_{12} = \\varphi_{l_1} -
\\varphi_{l_2}`):

=====  =========================================================================================
TT     :math:`C^{TT}_{l_1} \\mathbf{L}\\cdot\\mathbf{l}_1 + C^{TT}_{l_2} \\mathbf{L}\\cdot\\mathbf{l}_2`
TE     :math:`C^{TE}_{l_1} \\cos 2\\varphi_{12}\\, \\mathbf{L}\\cdot\\mathbf{l}_1 + C^{TE}_{l_2}
       \\mathbf{L}\\cdot\\mathbf{l}_2`
EE     :math:`[C^{EE}_{l_1} \\mathbf{L}\\cdot\\mathbf{l}_1 + C^{EE}_{l_2} \\mathbf{L}\\cdot\\mathbf{l}_2]
       \\cos 2\\varphi_{12}`
EB     :math:`[C^{EE}_{l_1} \\mathbf{L}\\cdot\\mathbf{l}_1 + C^{BB}_{l_2} \\mathbf{L}\\cdot\\mathbf{l}_2]
       \\sin 2\\varphi_{12}`
TB     :math:`C^{TE}_{l_1} \\mathbf{L}\\cdot\\mathbf{l}_1\\, \\sin 2\\varphi_{12}`
=====  =========================================================================================

The sign of the :math:`C^{BB}` term of EB is ``+`` here (Hu & Okamoto print ``-``, a difference of
B-mode sign convention). In this convention, with :math:`C^{EE} = C^{BB}` the fields Q and U are
independent and identically distributed, and :math:`\\langle E B\\rangle = \\sin 2\\varphi_{12}\\,
f^{TT}`, which fixes the sign; ``tests/test_qe_sims.py`` checks it on simulations with a large
primordial B.

Weights. With the inverse-variance (diagonal) filters :math:`\\bar X = X / C^{XX}_{\\rm tot}` the
estimator uses the response itself as weight, times 1/2 when both legs are the same field
(:math:`X = Y`), so that the normalisation of the TT, EE, EB and TB estimators equals their
Gaussian noise (Hu & Okamoto 2002, Eq. 14 and their optimal weights). For TE the diagonal filter
ignores the T-E correlation of the data: the estimator is unbiased but slightly sub-optimal
(Hu & Okamoto's fully optimal TE weight is not separable), and its N0 exceeds its normalisation.

References
----------
Hu & Okamoto (2002), ApJ 574, 566; Okamoto & Hu (2003), PRD 67, 083002.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError

FIELDS = ("T", "E", "B")
"""Fields a leg can act on."""

SPECTRA = ("TT", "EE", "BB", "TE")
"""Spectrum names a leg can carry."""


@dataclass(frozen=True)
class Leg:
    """One factor of a separable term: a function of one wavevector, acting on one field.

    Parameters
    ----------
    field : {'T', 'E', 'B'}
        The data field this leg multiplies.
    cl : {'TT', 'EE', 'BB', 'TE'} or None
        Spectrum factor :math:`C_{|l|}` (None: 1).
    angle : {'1', 'c', 's'}
        Angular factor 1, :math:`\\cos 2\\varphi_l` or :math:`\\sin 2\\varphi_l`.
    grad : {None, 0, 1}
        Gradient factor :math:`i l_x` (0) or :math:`i l_y` (1), or none.
    """

    field: str
    cl: str = None
    angle: str = "1"
    grad: int = None


@dataclass(frozen=True)
class Term:
    """One separable term ``coef * leg1(l1) * leg2(l2) * (-i L_j)`` of a response function."""

    coef: float
    leg1: Leg
    leg2: Leg
    j: int


@dataclass(frozen=True)
class Estimator:
    """A quadratic estimator: the pair of fields and the separable terms of its response.

    Attributes
    ----------
    name : str
        ``'TT'``, ``'TE'``, ``'EE'``, ``'EB'`` or ``'TB'``.
    x, y : str
        Fields of the first and second leg.
    terms : tuple of Term
        The response :math:`f^{XY}` as a sum of separable terms.
    """

    name: str
    x: str
    y: str
    terms: tuple

    @property
    def weight_factor(self) -> float:
        """1/2 for same-field estimators (TT, EE), else 1; see the module notes."""
        return 0.5 if self.x == self.y else 1.0


def _dot_terms(coef, cl, x, y, first, angle1="1", angle2="1"):
    """Terms of ``coef * C_{l_k} (L . l_k) * ang1(l1) ang2(l2)`` with ``C`` on leg ``first`` (1 or 2)."""
    out = []
    for j in (0, 1):
        if first == 1:
            out.append(Term(coef, Leg(x, cl, angle1, j), Leg(y, None, angle2, None), j))
        else:
            out.append(Term(coef, Leg(x, None, angle1, None), Leg(y, cl, angle2, j), j))
    return out


def _cos_diff(coef, cl, x, y, first):
    """``coef * C_{l_k} (L . l_k) cos 2(phi_1 - phi_2)``: cos cos + sin sin."""
    return _dot_terms(coef, cl, x, y, first, "c", "c") + _dot_terms(coef, cl, x, y, first, "s", "s")


def _sin_diff(coef, cl, x, y, first):
    """``coef * C_{l_k} (L . l_k) sin 2(phi_1 - phi_2)``: sin cos - cos sin."""
    return _dot_terms(coef, cl, x, y, first, "s", "c") + _dot_terms(-coef, cl, x, y, first, "c", "s")


ESTIMATORS = {
    "TT": Estimator("TT", "T", "T", tuple(
        _dot_terms(1.0, "TT", "T", "T", 1) + _dot_terms(1.0, "TT", "T", "T", 2))),
    "TE": Estimator("TE", "T", "E", tuple(
        _cos_diff(1.0, "TE", "T", "E", 1) + _dot_terms(1.0, "TE", "T", "E", 2))),
    "EE": Estimator("EE", "E", "E", tuple(
        _cos_diff(1.0, "EE", "E", "E", 1) + _cos_diff(1.0, "EE", "E", "E", 2))),
    "EB": Estimator("EB", "E", "B", tuple(
        _sin_diff(1.0, "EE", "E", "B", 1) + _sin_diff(1.0, "BB", "E", "B", 2))),
    "TB": Estimator("TB", "T", "B", tuple(_sin_diff(1.0, "TE", "T", "B", 1))),
}
"""The five Hu & Okamoto (2002) estimators, declared once (see the module notes)."""

COMBINATIONS = {
    "MV": ("TT", "TE", "EE", "EB", "TB"),
    "MV_POL": ("EE", "EB"),
}
"""Minimum-variance combinations: temperature + polarization, and polarization only."""

_ALIASES = {"POL": "MV_POL", "MVPOL": "MV_POL", "MV-POL": "MV_POL", "POL_MV": "MV_POL", "BT": "TB",
            "ET": "TE", "BE": "EB"}


def parse_estimator(estimator: str | Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Names of the individual estimators an estimator specification stands for.

    Parameters
    ----------
    estimator : str or sequence of str
        One of ``'TT', 'TE', 'EE', 'EB', 'TB'`` (a single estimator), ``'MV'`` (all five),
        ``'MV_POL'`` (alias ``'pol'``: EE and EB), case-insensitive; or a sequence of single
        estimator names to combine with minimum variance.

    Returns
    -------
    label : str
        Canonical label (e.g. ``'EB'``, ``'MV'``, ``'TT+EB'``).
    names : tuple of str
        The individual estimators, in the order of :data:`ESTIMATORS`.

    Raises
    ------
    ConfigError
        For an unknown name.
    """
    known = ", ".join(list(ESTIMATORS) + list(COMBINATIONS))
    if isinstance(estimator, str):
        key = estimator.strip().upper()
        key = _ALIASES.get(key, key)
        if key in ESTIMATORS:
            return key, (key,)
        if key in COMBINATIONS:
            return key, COMBINATIONS[key]
        raise ConfigError(f"qe.estimator: unknown estimator {estimator!r} (known: {known})")
    try:
        names = [_ALIASES.get(str(e).strip().upper(), str(e).strip().upper()) for e in estimator]
    except TypeError:
        raise ConfigError(f"qe.estimator: expected a name or a list of names, got {estimator!r}") from None
    bad = [n for n in names if n not in ESTIMATORS]
    if bad or not names:
        raise ConfigError(f"qe.estimator: unknown estimator(s) {bad or estimator!r} (known: {', '.join(ESTIMATORS)})")
    ordered = tuple(n for n in ESTIMATORS if n in names)
    return "+".join(ordered), ordered


def fields_needed(names: Iterable[str]) -> tuple[str, ...]:
    """Map names (``'T'``, ``'Q'``, ``'U'``) the estimators ``names`` read."""
    need = set()
    for n in names:
        est = ESTIMATORS[n]
        for f in (est.x, est.y):
            need |= {"T"} if f == "T" else {"Q", "U"}
    return tuple(k for k in ("T", "Q", "U") if k in need)

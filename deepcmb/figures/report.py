"""Read-only access to the evaluation report (``report.h5``) and the parameter chains (``chains.h5``).

The figures read these two files and nothing else. A dataset that a figure needs and the file lacks
raises :class:`~deepcmb.errors.InputError` naming the file and the dataset; optional content (an E
head, the iterative-noise theory, example maps) is tested with :meth:`Report.has` first.
"""

import numpy as np

from ..errors import InputError
from ..evaluation.report import FORMAT as REPORT_FORMAT
from ..io.files import open_checked
from ..params.output import FORMAT as CHAINS_FORMAT
from .style import method_colours


def _text(value):
    """An HDF5 string attribute (bytes or str) as str; other values unchanged."""
    return value.decode() if isinstance(value, bytes) else value


class _H5View:
    """An open deepcmb HDF5 file whose missing members raise :class:`InputError` naming file and member."""

    def __init__(self, path, fmt, what):
        self.path = path
        self._f = open_checked(path, fmt, what)

    def close(self):
        """Close the file."""
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def has(self, name):
        """Whether the dataset or group ``name`` (e.g. ``'theory/n_iterative'``) exists."""
        return name in self._f

    def array(self, name):
        """The dataset ``name`` as a numpy array (InputError naming file and dataset if absent)."""
        if name not in self._f:
            raise InputError(f"{self.path}: missing dataset /{name}")
        return self._f[name][()]

    def attr(self, name, where="/"):
        """Attribute ``name`` of the group or dataset ``where`` (InputError if absent)."""
        if where not in self._f or name not in self._f[where].attrs:
            raise InputError(f"{self.path}: missing attribute '{name}' of {where}")
        return _text(self._f[where].attrs[name])

    def keys(self, name):
        """Names of the members of group ``name`` (empty if it does not exist)."""
        return list(self._f[name].keys()) if name in self._f else []


class Report(_H5View):
    """An evaluation report opened read-only (a context manager).

    Parameters
    ----------
    path : str or Path
        ``report.h5`` of ``deepcmb evaluate`` (``format = 'deepcmb.evaluation'``).

    Attributes
    ----------
    methods : list of str
        Labels of the evaluated reconstructions, in the report's order (it fixes their colours).
    colours : dict
        label -> colour, fixed by the order of ``methods`` (:func:`deepcmb.figures.style.method_colours`).
    noise_p : ndarray, shape (n_levels,)
        Polarization noise levels in µK-arcmin.
    """

    def __init__(self, path):
        super().__init__(path, REPORT_FORMAT, "evaluation report")
        self.methods = [_text(m) for m in np.atleast_1d(self.attr("methods"))]
        self.colours = method_colours(self.methods)
        self.noise_p = np.atleast_1d(self.array("instrument/noise_p_uk_arcmin")).astype(float)

    @property
    def n_levels(self):
        """Number of noise levels."""
        return len(self.noise_p)

    def group(self, label, group, name):
        """Dataset ``name`` of the statistics group ``group`` of method ``label``, shape (nb,) or (nbe,)."""
        return self.array(f"methods/{label}/groups/{group}/{name}")

    def n_maps(self, label, group):
        """Number of maps averaged in a statistics group."""
        return int(self.attr("n_maps", f"methods/{label}/groups/{group}"))

    def e_methods(self):
        """Labels of the methods with an unlensed-E head (those whose groups carry ``E_rho``)."""
        return [m for m in self.methods if self.has(f"methods/{m}/groups/all/E_rho")]

    def estimators(self):
        """QE estimators with an analytic N0 in ``/theory`` (``n0_<EST>``), in file order."""
        return [k[3:] for k in self.keys("theory") if k.startswith("n0_")]

    def estimator_of(self, label):
        """The QE estimator of a method (its ``estimator`` attribute), or None for a network."""
        where = f"methods/{label}"
        return _text(self._f[where].attrs.get("estimator")) if self.has(where) else None

    def cosmologies(self, level):
        """Cosmology indices with maps at noise level ``level`` and their map counts.

        Returns
        -------
        index : ndarray of int, shape (k,)
        counts : ndarray of int, shape (k,)
        """
        cosmo = self.array("meta/cosmology_index")
        noise = self.array("meta/noise_index")
        return np.unique(cosmo[noise == level], return_counts=True)

    def theory_clkk(self, level):
        """Binned theory C_L^kk (sr) averaged over the maps of a noise level, shape (nb,).

        The pooled groups mix cosmologies, so their theory is the map-weighted mean of
        ``/cosmology/clkk`` over the maps' cosmologies (as in the report's n_eff).
        """
        index, counts = self.cosmologies(level)
        return counts @ self.array("cosmology/clkk")[index] / counts.sum()


class Chains(_H5View):
    """Parameter chains of ``deepcmb params`` opened read-only (a context manager).

    Parameters
    ----------
    path : str or Path
        ``chains.h5`` (``format = 'deepcmb.params'``).

    Attributes
    ----------
    labels : list of str
        Methods with chains (the root groups other than ``calibration`` and ``bins``).
    """

    def __init__(self, path):
        super().__init__(path, CHAINS_FORMAT, "parameter-chains")
        self.labels = [k for k in self.keys("/") if k not in ("calibration", "bins")]

    def cosmologies(self):
        """Sorted test-cosmology indices with a chain for at least one method."""
        found = {int(k[5:]) for label in self.labels for k in self.keys(label) if k.startswith("cosmo")}
        return sorted(found)

    def fits(self, cosmo):
        """The chains of one test cosmology.

        Returns
        -------
        list of (label, where, debias)
            Method label, HDF5 group of the chain and which noise debias it used: ``'calibrated'``
            for ``<label>/cosmo<c>``, ``'n0'`` for the N0-only fit ``<label>/cosmo<c>/n0_only`` that
            QE methods add.
        """
        found = []
        for label in self.labels:
            where = f"{label}/cosmo{cosmo}"
            if self.has(where):
                found.append((label, where, "calibrated"))
            if self.has(f"{where}/n0_only"):
                found.append((label, f"{where}/n0_only", "n0"))
        return found

    def samples(self, where):
        """Flattened posterior samples of the chain in group ``where``, its parameter names and true values.

        Returns
        -------
        samples : ndarray, shape (steps * walkers, ndim)
        names : list of str
        truth : ndarray, shape (ndim,)
        """
        chain = self.array(f"{where}/chain")
        names = [_text(n) for n in np.atleast_1d(self.attr("param_names", where))]
        truth = np.atleast_1d(np.asarray(self.attr("truth", where), dtype=float))
        return chain.reshape(-1, chain.shape[-1]), names, truth

    def prior(self, where):
        """Bounds of the flat prior of the chain in group ``where``: ``(lower, upper)``, each shape (ndim,)."""
        return tuple(np.atleast_1d(np.asarray(self.attr(name, where), dtype=float))
                     for name in ("prior_lower", "prior_upper"))


def check_same_bins(report, chains):
    """Refuse chains whose band powers were not binned like the report (made from another report).

    The chains may use a subset of the report's bins (their L range), so every edge of theirs must be
    one of the report's edges.
    """
    ours, theirs = report.array("bins/edges"), chains.array("bins/edges")
    if not np.all(np.isclose(theirs[:, None], ours[None, :], rtol=1e-9, atol=0).any(axis=1)):
        raise InputError(f"{chains.path}: /bins/edges differ from those of {report.path}; "
                         "the chains were made from another evaluation report")

"""Wiener-filtered E and B of observed maps: the input channels ``E_wf`` and ``B_wf`` of a network.

A network on masked maps that splits the masked Q, U into E and B itself (pseudo-E/B,
:class:`deepcmb.nn.layers.StokesToEB` after :class:`deepcmb.nn.layers.ApplyMask`) sees every point-source
hole as a sharp feature of the data, with E-to-B leakage around it, and has to learn to ignore it. The
channels made here hand it instead the Wiener filter of the data,

.. math:: x_{\\rm WF} = \\left(C^{-1} + \\mathcal{R}^\\dagger \\mathcal{B}\\, N^{-1} \\mathcal{B}\\,
          \\mathcal{R}\\right)^{-1} \\mathcal{R}^\\dagger \\mathcal{B}\\, N^{-1} d, \\qquad
          N^{-1} = M\\, \\mathrm{ivar}_P,

the E and B maps (µK) that the observed Q, U predict, holes and edges filled with what the surrounding data
imply and every pixel weighted by its noise: the filter of :mod:`deepcmb.qe.cinv` (the quadratic estimator's
on masked maps), with the fiducial lensed EE and BB spectra as the prior, solved on the modes
:math:`0 < l < \\pi / \\Delta` (the disc inside the Nyquist frequency, :math:`\\Delta` the pixel side: the
modes of the Nyquist row and column have no rotated partner on the grid, so their E/B split is a
convention that would make the filter differ from one orientation of the map to another). Non-periodic
patches are embedded in a periodic grid :data:`deepcmb.qe.quadratic.EMBEDDING_PAD` times larger, unobserved
outside the patch, and the filtered maps are multiplied by a cosine taper of :data:`BORDER_ARCMIN` along the
patch border (:func:`deepcmb.survey.edge_window`), so that the network's periodic padding meets no edge. The
filter is linear in the data and commutes with the rotations and reflections of the grid (``B_wf`` is a
pseudo-scalar), so the symmetrized prediction (:func:`deepcmb.nn.reconstruct.predict_symmetrized`) transforms
the filtered maps directly.

Cost: about 55 conjugate-gradient iterations, 50 ms per 64 x 64 masked patch on one core (the network's own
pass is a few ms). At the tolerance :data:`TOLERANCE` the filtered maps differ from converged ones by about
0.5 % (E) and 3 % (B) of their rms (masked 64 x 64 test maps, against a relative residual of 3e-5). The
filter's settings are constants of this module, so that a network is fed at reconstruction what it was
trained on.

References
----------
Smith, Zahn & Doré (2007), PRD 76, 043510 (the C^-1 filter by conjugate gradients); Carron & Lewis (2017),
PRD 96, 063510 (flat-sky filtering with masks and inhomogeneous noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..geometry import FlatSkyGeometry
from ..progress import Progress
from ..qe.cinv import CinvFilter
from ..qe.quadratic import EMBEDDING_PAD
from ..survey import box_cut, edge_window, padded_box

if TYPE_CHECKING:
    from ..sample import Instrument

TOLERANCE = 1e-3
"""Relative residual at which the filter's conjugate gradients stop."""
MAX_ITERATIONS = 500
"""Conjugate-gradient iterations at most (a :class:`~deepcmb.errors.ConvergenceError` beyond)."""
BORDER_ARCMIN = 15.0
"""Width of the cosine taper the filtered maps of a non-periodic patch are multiplied by along its border, arcmin."""


class WienerInputs:
    """The Wiener filter of observed Q, U maps of one geometry and beam (module docstring).

    Parameters
    ----------
    geom : FlatSkyGeometry
        Geometry of the maps.
    beam_fwhm_arcmin : float
        Gaussian beam FWHM of the maps, arcmin.
    periodic : bool
        Whether the maps are periodic; if not, they are embedded in a larger unobserved periodic grid and the
        filtered maps tapered along the border.
    lensed_cls : ndarray, shape (4, lmax + 1), optional
        Lensed ``TT, EE, BB, TE`` (µK²) of the prior; default the fiducial cosmology's
        (:func:`deepcmb.cosmology.compute_spectra` of no parameters: Planck 2018).
    tolerance : float
        Relative residual at which the conjugate gradients stop (the networks' inputs: :data:`TOLERANCE`).
    """

    def __init__(self, geom: FlatSkyGeometry, beam_fwhm_arcmin: float, periodic: bool,
                 lensed_cls: np.ndarray | None = None, tolerance: float = TOLERANCE):
        if lensed_cls is None:
            from ..cosmology import compute_spectra

            lensed_cls = compute_spectra({}).lensed
        self.geom, self.periodic = geom, bool(periodic)
        self.box = geom if periodic else padded_box(geom, EMBEDDING_PAD)
        self.cut = box_cut(self.box.shape, geom.shape)
        inside = geom.ell_nyquist * (1.0 - 1e-9)  # the disc l < l_Nyquist: not the Nyquist row and column
        self.filter = CinvFilter(self.box, lensed_cls, beam_fwhm_arcmin, 0.0, inside, tolerance, MAX_ITERATIONS)
        self.taper = np.ones(geom.shape) if periodic else edge_window(geom, BORDER_ARCMIN)

    @classmethod
    def for_maps(cls, geom: FlatSkyGeometry, instruments: Sequence[Instrument], periodic: bool,
                 where: str) -> WienerInputs:
        """The filter of maps observed by ``instruments`` (one per noise level), which must share one beam.

        Raises
        ------
        InputError
            Instruments of several beams, naming the maps ``where``.
        """
        beams = {inst.beam_fwhm_arcmin for inst in instruments}
        if len(beams) != 1:
            raise InputError(f"{where}: maps of several beams {sorted(beams)}; the Wiener-filtered inputs need one")
        return cls(geom, beams.pop(), periodic)

    def __call__(self, q: np.ndarray, u: np.ndarray, mask: np.ndarray, ivar_p: np.ndarray, *,
                 progress: bool = False) -> np.ndarray:
        """Filtered E and B of a stack of maps.

        Parameters
        ----------
        q, u : ndarray, shape (n, ny, nx)
            Observed Stokes maps, µK (any value where ``mask * ivar_p`` is zero).
        mask : ndarray, shape (n, ny, nx)
            Observation mask in [0, 1].
        ivar_p : ndarray, shape (n, ny, nx)
            Inverse noise variance per pixel of each of Q and U, 1/µK².
        progress : bool
            Show the progress of the loop over maps.

        Returns
        -------
        ndarray, float32, shape (n, 2, ny, nx)
            ``E_wf`` and ``B_wf`` of every map, µK.

        Raises
        ------
        InputError
            A map with no observed pixel, or stacks of other shapes.
        """
        stacks = [np.asarray(a, dtype=float) for a in (q, u, mask, ivar_p)]
        shape = (len(stacks[0]),) + self.geom.shape
        if any(a.shape != shape for a in stacks):
            raise InputError(f"Wiener-filtered inputs: Q, U, mask and ivar_p must all have shape {shape}")
        out = np.empty((shape[0], 2) + self.geom.shape, np.float32)
        qu = np.zeros((2,) + self.box.shape)
        weight = np.zeros(self.box.shape)
        with Progress(shape[0], "Wiener filter", "map", enabled=progress, leave=False) as bar:
            for i in range(shape[0]):
                qu[(slice(None),) + self.cut] = stacks[0][i], stacks[1][i]
                weight[self.cut] = stacks[2][i] * stacks[3][i]
                sky = self.filter.filter(qu, weight).sky
                out[i] = sky[(slice(None),) + self.cut] * self.taper
                bar.update(1)
        return out

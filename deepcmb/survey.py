"""Survey realism for simulated patches: a mask, an inhomogeneous noise map, non-periodic cuts.

Real maps are not periodic tori observed with uniform white noise. A :class:`Survey` (the
``survey`` section of the simulate stage, :data:`SCHEMA`) adds to every simulated map:

**A mask** :math:`M(\\mathbf{x})` in [0, 1]: 1 where observed, 0 in holes around point sources and
on the survey edge, smooth in between. It is the product of a cosine taper along the patch border
and of one apodised hole per source,

.. math:: M(\\mathbf{x}) = t\\!\\left(\\frac{d_x}{w_e}\\right) t\\!\\left(\\frac{d_y}{w_e}\\right)
          \\prod_k t\\!\\left(\\frac{|\\mathbf{x} - \\mathbf{x}_k| - R}{w_h}\\right), \\qquad
          t(u) = \\sin^2\\!\\Big(\\frac{\\pi}{2}\\min(\\max(u, 0), 1)\\Big),

with :math:`d_x, d_y` the distances of a pixel centre from the nearest border along x and y (pixel
``i`` covers ``[i - 1/2, i + 1/2]`` pixels, so :math:`d = (i + 1/2)\\,\\theta_{pix}` on the low side),
:math:`w_e` the edge width (``mask.edge_arcmin``; 0: no edge), :math:`R` the hole radius and
:math:`w_h` its apodisation (:math:`t` a step at 0 when :math:`w_h = 0`). The hole centres
:math:`\\mathbf{x}_k` are a Poisson process of density :math:`n_h` per deg² (``mask.holes_per_deg2``),
uniform over the patch grown by :math:`R + w_h` on every side, so that holes cut the border as
often as the inside; on a periodic patch they are uniform over the torus and distances are
periodic. Either way a pixel lies inside a hole (:math:`M = 0`) with probability
:math:`1 - \\exp(-n_h \\pi R^2)`.

**A noise map**: the polarization depth varies across the map,

.. math:: \\Delta_P(\\mathbf{x}) = \\Delta_P \\left[f_{min} + (f_{max} - f_{min})\\,
          \\Phi\\!\\left(\\frac{G(\\mathbf{x}) + a\\, S(\\mathbf{x})}{\\sqrt{1 + a^2}}\\right)\\right],

with :math:`\\Delta_P` the level's ``noise_p_uk_arcmin``, :math:`[f_{min}, f_{max}]` the range
``noise.depth_factor``, :math:`\\Phi` the standard normal distribution function, :math:`G` a
unit-variance Gaussian random field (white noise smoothed by a Gaussian kernel of standard deviation
``noise.correlation_arcmin``, drawn on a grid twice the map's side and cut, so it is not periodic) and
:math:`S` scan-like stripes: bands of width ``noise.stripe_width_arcmin`` running along the direction
``noise.stripe_angle_deg`` (from x towards y), at a random offset, each with an independent standard
normal amplitude, weighted by :math:`a` (``noise.stripe_amplitude``). The argument of :math:`\\Phi` is a
unit normal at every pixel, so the local depth is uniformly distributed over
:math:`[f_{min}, f_{max}]\\,\\Delta_P`. It is stored as the inverse noise variance per pixel of each
of Q and U (1/µK², the ``ivar_p`` of an observation file, :mod:`deepcmb.io.observations`),

.. math:: \\mathrm{ivar}_P(\\mathbf{x}) = \\left(\\frac{\\theta_{pix}}{\\Delta_P(\\mathbf{x})}\\right)^2,

with :math:`\\theta_{pix}` the pixel side in arcmin, and the noise of the observed maps is drawn from
it: :math:`n_{Q,U}(\\mathbf{x}) = r(\\mathbf{x}) / \\sqrt{\\mathrm{ivar}_P(\\mathbf{x})}` and
:math:`n_T = (\\Delta_T / \\Delta_P)\\, r / \\sqrt{\\mathrm{ivar}_P}`, with :math:`r` unit normal per pixel
and map (:func:`deepcmb.sample.add_noise`).

**Non-periodic flat patches** (``periodic: false``): the map is the central part of a periodic box
``pad`` times larger per side (:meth:`Survey.box`, :func:`box_cut`), lensed exactly on the box, so
it holds lenses larger than itself and its opposite edges do not match (:class:`deepcmb.sample.FlatSimulator`).

Every random number comes from the map's own streams (:func:`deepcmb.sample.sample_rng`, components
``'mask'`` and ``'depth'``), so the maps do not depend on the number of workers.

References
----------
Hivon et al. (2002), ApJ 567, 2 (apodised masks); Benoit-Levy et al. (2013), A&A 555, A37 (masking
point sources in lensing reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.special import ndtr

from .config import Bool, ListOf, Number, resolve
from .errors import ConfigError
from .geometry import ARCMIN, FlatSkyGeometry

SURVEY_MAPS = ("mask", "ivar_p")
"""The per-map survey datasets: the mask (1) and the inverse noise variance of each of Q and U per
pixel (1/µK²); same meaning as in an observation file (:mod:`deepcmb.io.observations`)."""

SCHEMA = {
    "periodic": Bool(True, doc="flat geometry: true: the map is the periodic box; false: the map is the centre "
                               "of a periodic box pad times larger, so not periodic (curved patches never are)"),
    "pad": Number(2.0, gt=1, doc="periodic false: side of the simulated box over the side of the map"),
    "mask": {
        "edge_arcmin": Number(0.0, min=0, doc="width of the cosine taper of the mask along the map border, "
                                              "arcmin (0: no edge)"),
        "holes_per_deg2": Number(0.0, min=0, doc="mean number of point-source holes per square degree (0: none)"),
        "hole_radius_arcmin": Number(4.0, gt=0, doc="radius of a hole (mask 0 inside), arcmin"),
        "hole_apodization_arcmin": Number(2.0, min=0, doc="width of the cosine taper around a hole, arcmin"),
    },
    "noise": {
        "depth_factor": ListOf(Number(gt=0), [1.0, 1.0], min_len=2, max_len=2,
                               doc="[min, max] of the local polarization depth over noise_p_uk_arcmin "
                                   "([1, 1]: uniform white noise, no noise map)"),
        "correlation_arcmin": Number(30.0, gt=0, doc="Gaussian smoothing scale of the large-scale depth "
                                                     "variation, arcmin"),
        "stripe_amplitude": Number(0.0, min=0, doc="weight of the stripes against the large-scale variation "
                                                   "(0: none)"),
        "stripe_width_arcmin": Number(10.0, gt=0, doc="width of a stripe, arcmin"),
        "stripe_angle_deg": Number(0.0, doc="direction the stripes run along, degrees from x towards y"),
    },
}
"""The ``survey`` section of :data:`deepcmb.simulate.SCHEMA` (defaults: a periodic map, no mask,
uniform white noise)."""


@dataclass(frozen=True)
class Survey:
    """Mask, noise map and periodicity of simulated maps (the module docstring has the formulas).

    Build one with :meth:`from_config`; the attributes are the leaves of :data:`SCHEMA`.

    Attributes
    ----------
    periodic : bool
        Flat sky: whether the map is the periodic box itself.
    pad : float
        Side of the periodic box over the side of the map (``periodic`` false), > 1.
    edge_arcmin, hole_radius_arcmin, hole_apodization_arcmin : float
        Mask edge taper, hole radius and hole taper, arcmin.
    holes_per_deg2 : float
        Density of holes, per deg².
    depth_factor : tuple of float
        ``(f_min, f_max)``: range of the local polarization depth in units of the level's.
    correlation_arcmin : float
        Smoothing scale of the large-scale depth variation, arcmin.
    stripe_amplitude : float
        Weight ``a`` of the stripes.
    stripe_width_arcmin, stripe_angle_deg : float
        Width of a stripe (arcmin) and the direction it runs along (degrees from x towards y).
    """

    periodic: bool
    pad: float
    edge_arcmin: float
    holes_per_deg2: float
    hole_radius_arcmin: float
    hole_apodization_arcmin: float
    depth_factor: tuple
    correlation_arcmin: float
    stripe_amplitude: float
    stripe_width_arcmin: float
    stripe_angle_deg: float

    def __post_init__(self):
        lo, hi = self.depth_factor
        if lo > hi:
            raise ConfigError(f"survey.noise.depth_factor: expected [min, max] with min <= max, got [{lo}, {hi}]")
        if lo == hi != 1.0:
            raise ConfigError(f"survey.noise.depth_factor: a uniform depth is instrument.noise_p_uk_arcmin's; "
                              f"give min < max for a noise map, or [1, 1] for none (got [{lo}, {hi}])")
        if self.stripe_amplitude > 0 and lo == hi:
            raise ConfigError("survey.noise.stripe_amplitude: stripes need a noise map (depth_factor with min < max)")

    @classmethod
    def from_config(cls, section: dict | None = None) -> Survey:
        """The survey of a ``survey`` config section (partial or resolved; missing keys take the defaults).

        Raises
        ------
        ConfigError
            For a bad key or value, naming it (``survey.mask.edge_arcmin: ...``).
        """
        cfg = resolve(section, SCHEMA, prefix="survey.")
        flat = {"periodic": cfg["periodic"], "pad": cfg["pad"], **cfg["mask"], **cfg["noise"]}
        flat["depth_factor"] = tuple(flat["depth_factor"])
        return cls(**{f.name: flat[f.name] for f in fields(cls)})

    @property
    def has_mask(self) -> bool:
        """Whether the maps get a mask (an edge taper or holes)."""
        return self.edge_arcmin > 0 or self.holes_per_deg2 > 0

    @property
    def has_noise_map(self) -> bool:
        """Whether the noise depth varies across the maps."""
        return self.depth_factor[0] < self.depth_factor[1]

    @property
    def maps(self) -> tuple[str, ...]:
        """The survey datasets the maps get, from :data:`SURVEY_MAPS`."""
        return tuple(name for name, on in zip(SURVEY_MAPS, (self.has_mask, self.has_noise_map)) if on)

    def check(self, geom: FlatSkyGeometry, noise_p_uk_arcmin: list[float]) -> None:
        """Check the settings against the map geometry and the noise levels (raises ConfigError)."""
        side = min(geom.shape) * geom.pixel_arcmin
        if 2 * self.edge_arcmin > side:
            raise ConfigError(f"survey.mask.edge_arcmin: tapers of 2 x {self.edge_arcmin:g} arcmin do not fit "
                              f"a side of {side:g} arcmin")
        if self.has_noise_map and min(noise_p_uk_arcmin) == 0:
            raise ConfigError("survey.noise.depth_factor: a noise map needs instrument.noise_p_uk_arcmin > 0 at "
                              "every level")

    def box(self, geom: FlatSkyGeometry) -> FlatSkyGeometry:
        """The periodic box a flat map of geometry ``geom`` is cut from: ``geom`` itself when
        :attr:`periodic`, else each side grown by ``2 ceil((pad - 1) n / 2)`` pixels (same pixel)."""
        return geom if self.periodic else padded_box(geom, self.pad)

    def on(self, geom: FlatSkyGeometry, periodic: bool) -> SurveyPatch:
        """The survey's maps on patches of geometry ``geom`` (periodic or not), precomputed once."""
        return SurveyPatch(self, geom, periodic)


def padded_box(geom: FlatSkyGeometry, pad: float) -> FlatSkyGeometry:
    """The periodic grid around a flat map of geometry ``geom``, about ``pad`` times larger per side: each side
    grown by ``2 ceil((pad - 1) n / 2)`` pixels of the same size (the map is its centre, :func:`box_cut`)."""
    shape = tuple(n + 2 * int(np.ceil((pad - 1.0) * n / 2.0)) for n in geom.shape)
    return FlatSkyGeometry(shape, geom.pixel_arcmin)


def box_cut(box_shape: tuple[int, int], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Index of the central ``shape`` pixels of a map of shape ``box_shape`` (``m[box_cut(...)]``)."""
    return tuple(slice((b - n) // 2, (b - n) // 2 + n) for b, n in zip(box_shape, shape))


def cosine_taper(u: np.ndarray) -> np.ndarray:
    """:math:`t(u) = \\sin^2(\\pi/2 \\cdot \\min(\\max(u, 0), 1))`: 0 for ``u <= 0``, 1 for ``u >= 1``."""
    return np.sin(0.5 * np.pi * np.clip(u, 0.0, 1.0)) ** 2


def edge_window(geom: FlatSkyGeometry, width_arcmin: float) -> np.ndarray:
    """The mask's survey edge: :math:`t(d_x / w_e)\\, t(d_y / w_e)`, shape ``geom.shape``.

    Equal to :func:`deepcmb.qe.apodization.cosine_window` of the same width; all ones for
    ``width_arcmin = 0``.
    """
    out = np.ones(geom.shape)
    if width_arcmin == 0:
        return out
    for axis, n in enumerate(geom.shape):
        x = (np.arange(n) + 0.5) * geom.pixel_arcmin
        w1 = cosine_taper(np.minimum(x, n * geom.pixel_arcmin - x) / width_arcmin)
        out *= w1[:, None] if axis == 0 else w1[None, :]
    return out


def hole_centres(geom: FlatSkyGeometry, holes_per_deg2: float, margin_arcmin: float, periodic: bool,
                 rng: np.random.Generator) -> np.ndarray:
    """Centres of the point-source holes of one map: a Poisson process.

    Parameters
    ----------
    geom : FlatSkyGeometry
    holes_per_deg2 : float
        Density, per deg².
    margin_arcmin : float
        Non-periodic maps: the region is the map (pixel centres ``i * pixel``, pixels of side ``pixel``)
        grown by this margin on every side (the hole radius plus its taper).
    periodic : bool
        Periodic maps: the region is the torus ``[0, n * pixel)`` per axis, no margin.
    rng : numpy.random.Generator
        Draws the number (Poisson, mean ``holes_per_deg2`` times the region's area), then the
        positions (uniform).

    Returns
    -------
    ndarray, shape (n_holes, 2)
        ``(y, x)`` in arcmin, in the frame where pixel ``(iy, ix)`` sits at ``(iy, ix) * pixel``.
    """
    sides = np.array(geom.shape) * geom.pixel_arcmin
    low = np.zeros(2) if periodic else np.full(2, -0.5 * geom.pixel_arcmin - margin_arcmin)
    high = sides if periodic else sides - 0.5 * geom.pixel_arcmin + margin_arcmin
    n = rng.poisson(holes_per_deg2 * np.prod(high - low) / 3600.0)
    return rng.uniform(low, high, size=(n, 2))


class SurveyPatch:
    """A :class:`Survey`'s maps on patches of one geometry; what does not depend on the map is computed
    once (the edge taper, the smoothing kernel, the coordinate across the stripes).

    Parameters
    ----------
    survey : Survey
    geom : FlatSkyGeometry
        The patch.
    periodic : bool
        Whether the patch is periodic (holes then wrap around its edges).
    """

    def __init__(self, survey: Survey, geom: FlatSkyGeometry, periodic: bool):
        self.survey, self.geom, self.periodic = survey, geom, periodic
        self._edge = edge_window(geom, survey.edge_arcmin)
        ny, nx = geom.shape
        y, x = np.meshgrid(np.arange(ny) * geom.pixel_arcmin, np.arange(nx) * geom.pixel_arcmin, indexing="ij")
        angle = np.radians(survey.stripe_angle_deg)
        self._across = (y * np.cos(angle) - x * np.sin(angle)) / survey.stripe_width_arcmin  # in stripe widths
        self._big = FlatSkyGeometry(tuple(2 * n for n in geom.shape), geom.pixel_arcmin)
        sigma = survey.correlation_arcmin * ARCMIN
        self._kernel = np.exp(-0.5 * (self._big.ell() * sigma) ** 2)
        # per-pixel variance of the smoothed unit white noise: the mean of |K|^2 over the full Fourier grid
        self._norm = np.sqrt(np.mean(np.exp(-(self._big.ell(real=False) * sigma) ** 2)))

    def mask(self, rng: np.random.Generator) -> np.ndarray:
        """One map's mask in [0, 1], shape ``geom.shape``; draws the holes from ``rng``
        (:func:`hole_centres`)."""
        s = self.survey
        out = self._edge.copy()
        if s.holes_per_deg2 == 0:
            return out
        reach = s.hole_radius_arcmin + s.hole_apodization_arcmin
        for centre in hole_centres(self.geom, s.holes_per_deg2, reach, self.periodic, rng):
            (iy, dy), (ix, dx) = (self._reached(axis, c, reach) for axis, c in enumerate(centre))
            beyond = np.hypot(dy[:, None], dx[None, :]) - s.hole_radius_arcmin
            apod = s.hole_apodization_arcmin
            out[np.ix_(iy, ix)] *= cosine_taper(beyond / apod) if apod > 0 else beyond > 0
        return out

    def _reached(self, axis, centre, reach):
        """Pixel indices along ``axis`` within ``reach`` arcmin of ``centre`` (arcmin), and their offsets
        from it (periodic patches: each pixel once, at its nearest image)."""
        n, pixel = self.geom.shape[axis], self.geom.pixel_arcmin
        lo, hi = int(np.ceil((centre - reach) / pixel)), int(np.floor((centre + reach) / pixel))
        if not self.periodic:
            index = np.arange(max(lo, 0), min(hi, n - 1) + 1)
            return index, index * pixel - centre
        index = np.arange(lo, hi + 1) % n if hi - lo + 1 < n else np.arange(n)
        side = n * pixel
        return index, (index * pixel - centre + 0.5 * side) % side - 0.5 * side

    def depth_factor(self, rng: np.random.Generator) -> np.ndarray:
        """One map's local polarization depth in units of the level's, in ``depth_factor``, shape
        ``geom.shape``: draws the large-scale field, then the stripes' offset and amplitudes from ``rng``."""
        s, big, (ny, nx) = self.survey, self._big, self.geom.shape
        white = rng.standard_normal(big.shape)
        z = big.fourier2map(big.map2fourier(white) * self._kernel)[:ny, :nx] / self._norm
        band = np.floor(self._across + rng.uniform())
        lowest = int(band.min())
        amplitudes = rng.standard_normal(int(band.max()) - lowest + 1)
        z = (z + s.stripe_amplitude * amplitudes[band.astype(int) - lowest]) / np.hypot(1.0, s.stripe_amplitude)
        lo, hi = s.depth_factor
        return lo + (hi - lo) * ndtr(z)

    def ivar_p(self, noise_p_uk_arcmin: float, rng: np.random.Generator) -> np.ndarray:
        """One map's inverse noise variance of each of Q and U per pixel, 1/µK², shape ``geom.shape``:
        :math:`(\\theta_{pix} / \\Delta_P(\\mathbf{x}))^2` with :meth:`depth_factor` drawn from ``rng``."""
        return (self.geom.pixel_arcmin / (noise_p_uk_arcmin * self.depth_factor(rng))) ** 2

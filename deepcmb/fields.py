"""The table of every map deepcmb knows: units, description, symmetry class and role.

One row per field name, used wherever a map is stored, read, fed to the network or transformed:
the simulation file's datasets (:mod:`deepcmb.io.sims`), the simulator's fields (:mod:`deepcmb.sample`), the network's allowed inputs and heads
(:mod:`deepcmb.nn.model`) and the spin-aware augmentation (:mod:`deepcmb.nn.augment`).

Symmetry class (``spin``), for the convention ``Q(l) + i U(l) = (E(l) + i B(l)) exp(2 i phi_l)``:
``'scalar'`` maps are moved by a rotation or reflection of the grid; ``'Q'`` and ``'U'`` are the two
components of a spin-2 field; ``'pseudo'`` (B) is a pseudo-scalar that flips sign under a reflection.

Role: ``'observed'`` maps are data (lensed, beam-convolved, noisy, or a fixed linear map of them);
``'lensed'`` the noise-free lensed sky; ``'unlensed'`` and ``'lensing'`` the truth a network may be
trained to recover; ``'reconstruction'`` a map another estimator made from the observed maps; ``'survey'``
the per-map weights of the observations (mask and noise map, :mod:`deepcmb.survey`, stored beside the maps
as ``/mask`` and ``/ivar_p``, not by ``simulation.fields``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One kind of map.

    Attributes
    ----------
    name : str
        Dataset name (``/maps/<name>``) and channel name.
    units : str
        ``'uK'``, ``'rad^2'`` or ``'1'`` (dimensionless).
    description : str
        One line.
    spin : {'scalar', 'Q', 'U', 'pseudo'}
        How the map transforms under the symmetries of the grid (module docstring).
    role : {'observed', 'lensed', 'unlensed', 'lensing', 'reconstruction', 'survey'}
        Data, noise-free sky, truth, another estimator's output, or the data's mask and noise map.
    stored : bool
        Whether the simulate stage can store it (``simulation.fields``).
    """

    name: str
    units: str
    description: str
    spin: str
    role: str
    stored: bool = True


FIELDS = {f.name: f for f in (
    Field("T", "uK", "observed temperature: lensed, beam-convolved, plus white noise", "scalar", "observed"),
    Field("Q", "uK", "observed Stokes Q: lensed, beam-convolved, plus white noise", "Q", "observed"),
    Field("U", "uK", "observed Stokes U: lensed, beam-convolved, plus white noise", "U", "observed"),
    Field("T_lensed", "uK", "lensed temperature, no beam, no noise", "scalar", "lensed"),
    Field("Q_lensed", "uK", "lensed Stokes Q, no beam, no noise", "Q", "lensed"),
    Field("U_lensed", "uK", "lensed Stokes U, no beam, no noise", "U", "lensed"),
    Field("T_unlensed", "uK", "unlensed temperature", "scalar", "unlensed"),
    Field("E_unlensed", "uK", "unlensed E mode as a scalar map", "scalar", "unlensed"),
    Field("B_unlensed", "uK", "unlensed B mode as a scalar map", "pseudo", "unlensed"),
    Field("Q_unlensed", "uK", "unlensed Stokes Q", "Q", "unlensed"),
    Field("U_unlensed", "uK", "unlensed Stokes U", "U", "unlensed"),
    Field("phi", "rad^2", "lensing potential", "scalar", "lensing"),
    Field("kappa", "1", "lensing convergence kappa = -laplacian(phi)/2", "scalar", "lensing"),
    Field("E", "uK", "observed E mode as a scalar map: the flat-sky E/B split of the observed Q, U", "scalar",
          "observed", stored=False),
    Field("B", "uK", "observed B mode as a scalar map: the flat-sky E/B split of the observed Q, U", "pseudo",
          "observed", stored=False),
    Field("E_wf", "uK", "Wiener-filtered observed E mode: the C^-1 filter of the observed Q, U with their mask and "
          "noise map (deepcmb.nn.wiener)", "scalar", "observed", stored=False),
    Field("B_wf", "uK", "Wiener-filtered observed B mode: the C^-1 filter of the observed Q, U with their mask and "
          "noise map (deepcmb.nn.wiener)", "pseudo", "observed", stored=False),
    Field("kappa_qe", "1", "quadratic-estimator kappa of the observed maps (a reconstruction file)", "scalar",
          "reconstruction", stored=False),
    Field("mask", "1", "observation mask in [0, 1]: 1 where observed, 0 in holes and beyond the survey edge",
          "scalar", "survey", stored=False),
    Field("ivar_p", "1/uK^2", "inverse noise variance per pixel of each of Q and U", "scalar", "survey",
          stored=False),
)}
"""Field name -> :class:`Field`."""

STORED = tuple(name for name, f in FIELDS.items() if f.stored)
"""Every map a simulation can store, in the order of the table (the default ``simulation.fields``)."""


EB_INPUTS = ("E", "B")
"""Derived input channels: the observed (lensed, beam-convolved, noisy) E and B maps, in µK, made from
the observed Stokes ``Q`` and ``U`` by the flat-sky rotation of their Fourier modes
(:meth:`~deepcmb.geometry.FlatSkyGeometry.qu2eb_maps`). A fixed, exact linear map of the same data on
periodic maps; it hands the network the faint B modes, which carry most of the lensing information at
low noise, apart from the E power that dominates Q and U."""


WIENER_INPUTS = ("E_wf", "B_wf")
"""Derived input channels: the Wiener-filtered E and B of the observed ``Q`` and ``U``, in µK, made with the
data's mask and noise map by conjugate gradients (:mod:`deepcmb.nn.wiener`) before the network, not by one of
its layers. On masked maps the filter fills the holes and the survey edge with what the data predict there and
weights every pixel by its noise, so no hole edge or E-to-B leakage reaches the network."""

UNFILTERED = dict(zip(WIENER_INPUTS, EB_INPUTS))
"""Each Wiener-filtered channel -> the unfiltered channel of the same field (``E_wf`` -> ``E``)."""


def stored_fields(names: Iterable[str]) -> list[str]:
    """The maps that ``names`` are made of: each of :data:`EB_INPUTS` replaced by ``Q`` and ``U`` (order
    kept, no repeats). For a network's input channels, the maps its file takes (the E/B split is a layer
    of the network, :class:`deepcmb.nn.layers.StokesToEB`)."""
    out = []
    for n in names:
        for m in (("Q", "U") if n in EB_INPUTS else (n,)):
            if m not in out:
                out.append(m)
    return out


def units(name: str) -> str:
    """Units of field ``name`` (``''`` for a name not in the table)."""
    return FIELDS[name].units if name in FIELDS else ""


SURVEY_INPUTS = tuple(n for n, f in FIELDS.items() if f.role == "survey")
"""Input channels that describe the data rather than hold it: the mask and the noise map. A network that
takes ``mask`` multiplies its observed channels by it (:class:`deepcmb.nn.layers.ApplyMask`)."""


def multiplied_by_mask(name: str) -> bool:
    """Whether a network that takes a mask multiplies input channel ``name`` by it
    (:class:`deepcmb.nn.layers.ApplyMask`): every channel but the mask itself and the Wiener-filtered maps,
    which weight the data by the mask already."""
    return name != "mask" and name not in WIENER_INPUTS

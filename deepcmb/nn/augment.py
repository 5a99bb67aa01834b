"""Symmetry augmentation of flat-sky maps: rotations by multiples of 90 degrees and reflections.

The eight symmetries of a square pixel grid map the (periodic) grid onto itself, so a rotated or
reflected simulation is as valid a sample as the original, *provided every map transforms as the
field it represents*. Scalars (T, E, kappa, phi) are simply moved. Stokes Q and U are the components
of a spin-2 field: for the convention ``Q(l) + i U(l) = (E(l) + i B(l)) exp(2 i phi_l)`` a rotation of
the sky by an angle ``alpha`` multiplies ``Q + iU`` by ``exp(2 i alpha)`` (besides moving the pixels),
and a reflection conjugates it. Hence, for the transform ``k = 4 f + r`` (``r`` quarter turns, then a
reflection of the x axis if ``f = 1``):

=========================  ============================
field                      sign after moving the pixels
=========================  ============================
scalar (T, E, kappa, phi)  +1
Q                          (-1)^r
U                          (-1)^(r + f)
B (a pseudo-scalar)        (-1)^f
=========================  ============================

With these signs E stays E and B flips sign under reflections, and lensing commutes with the
transform: lensing the transformed unlensed maps by the transformed phi gives the transformed lensed
maps (tested in ``tests/test_nn_data.py``). Non-square maps only admit ``r`` in {0, 2}.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..fields import FIELDS


def field_sign(name: str, k: int) -> float:
    """Sign multiplying field ``name`` under transform ``k`` (0..7) after the pixels are moved (its
    symmetry class is the ``spin`` column of :data:`deepcmb.fields.FIELDS`)."""
    if name not in FIELDS:
        raise ValueError(f"no transformation rule for field {name!r}")
    r, f = k % 4, k // 4
    return {"scalar": 1.0, "Q": (-1.0) ** r, "U": (-1.0) ** (r + f), "pseudo": (-1.0) ** f}[FIELDS[name].spin]


def transform_pixels(m: np.ndarray, k: int) -> np.ndarray:
    """Move the pixels of maps ``m[..., ny, nx]``: ``k % 4`` quarter turns, then an x reflection if ``k >= 4``."""
    if not 0 <= k < 8:
        raise ValueError(f"transform index must lie in 0..7, got {k}")
    out = np.rot90(m, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.flip(out, axis=-1)
    return out


def inverse_transform(k: int) -> int:
    """Index of the symmetry undoing symmetry ``k`` (0..7): ``(4 - k) % 4`` quarter turns for a rotation;
    a reflection (``k >= 4``, a turn followed by a flip) undoes itself."""
    if not 0 <= k < 8:
        raise ValueError(f"transform index must lie in 0..7, got {k}")
    return k if k >= 4 else (4 - k) % 4


def transform_maps(maps: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Apply symmetry ``k`` (0..7) to a dict of maps ``name -> (..., ny, nx)``, spin-2 aware."""
    return {name: field_sign(name, k) * transform_pixels(m, k) for name, m in maps.items()}


def allowed_transforms(shape: tuple[int, ...], rotations: bool = True, flips: bool = True) -> list[int]:
    """Transform indices usable on maps of ``shape`` (square maps allow quarter turns)."""
    turns = (0, 1, 2, 3) if shape[0] == shape[1] else (0, 2)
    if not rotations:
        turns = (0,)
    return [r + 4 * f for f in ((0, 1) if flips else (0,)) for r in turns]

"""Shared fixtures: fiducial CAMB spectra (computed once per session, cached on disk)."""

import pytest

from deepcmb.cosmology import compute_spectra
from deepcmb.geometry import FlatSkyGeometry


@pytest.fixture(scope="session")
def fiducial():
    """Planck 2018 fiducial spectra to lmax 5000."""
    return compute_spectra({})


@pytest.fixture(scope="session")
def geom128():
    """The DeepCMB patch: 128 x 128 pixels of 2.34375 arcmin (5 deg)."""
    return FlatSkyGeometry((128, 128), 2.34375)

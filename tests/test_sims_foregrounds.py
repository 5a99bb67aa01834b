"""Foreground residuals in simulated maps (deepcmb.foregrounds): their statistics, their place in the simulator and
the simulation file."""

import h5py
import numpy as np
import pytest

from deepcmb.binning import bin_theory, binned_fourier_power, linear_bins
from deepcmb.errors import ConfigError
from deepcmb.foregrounds import Foregrounds, planck_derivative
from deepcmb.geometry import ARCMIN, FlatSkyGeometry
from deepcmb.sample import FlatSimulator, Instrument, convolve_beam
from deepcmb.simulate import run_simulate

GEOM = FlatSkyGeometry((64, 64), 2.34375)
SMALL = {"seed": 11, "n_maps": 6, "geometry": {"shape": [32, 32], "pixel_arcmin": 2.34375},
         "instrument": {"noise_p_uk_arcmin": [1.0]},
         "simulation": {"fields": ["T", "Q", "U", "Q_lensed", "U_lensed", "kappa"], "block_size": 3}}


def test_planck_derivative_at_150_ghz():
    """dB/dT at 150 GHz is 398 Jy/sr per uK_CMB (x = h nu / k T = 2.64), and falls off as x^4 e^-x at high x."""
    assert planck_derivative(150.0) == pytest.approx(398.5, rel=1e-3)
    assert planck_derivative(30.0) == pytest.approx(2 * 1.380649e-23 * 3e10**2 / 299792458.0**2 / 1e-26 * 1e-6, rel=0.06)


def test_dust_residual_has_its_power_law_spectrum():
    """The E and B power of the dust-like residual, measured on 40 maps, is its C_l^EE, C_l^BB to the sample
    variance (a few per cent per bin)."""
    fg = Foregrounds.from_config({"dust": {"d80_ee_uk2": 0.2, "alpha": -2.42, "bb_over_ee": 0.4}})
    rng = np.random.default_rng(3)
    qu = np.array([fg.dust_qu(GEOM, rng) for _ in range(40)])
    e, b = GEOM.qu2eb(qu[:, 0], qu[:, 1])
    edges = linear_bins(300, 2100, 300)
    ee, bb = fg.dust_cl(np.arange(4000))
    for modes, cl in ((e, ee), (b, bb)):
        ratio = binned_fourier_power(GEOM, modes, modes, edges).mean(axis=0) / bin_theory(GEOM, cl, edges)
        assert np.all(np.abs(ratio - 1) < 0.12), ratio
    assert ee[80] * 80 * 81 / (2 * np.pi) == pytest.approx(0.2)


def test_point_sources_have_their_counts_fluxes_and_polarization():
    """Poisson counts of the configured density; fluxes within [S_min, S_max] with the dN/dS slope; each source
    a single pixel of Delta T = S / (Omega dB/dT) with |P| = p Delta T."""
    fg = Foregrounds.from_config({"sources": {"per_deg2": 10.0, "flux_mjy": [1.0, 8.0], "slope": 2.5,
                                              "pol_fraction": 0.05}})
    rng = np.random.default_rng(5)
    area = np.prod(GEOM.shape) * (GEOM.pixel_arcmin / 60) ** 2
    counts, values = [], []
    for _ in range(200):
        t, q, u = fg.sources_tqu(GEOM, rng)
        on = t > 0
        counts.append(on.sum())
        values.append(np.stack([t[on], np.hypot(q[on], u[on])]))
    assert np.mean(counts) == pytest.approx(10.0 * area, rel=0.05)
    t, p = np.concatenate(values, axis=1)
    top = 8.0 * 1e-3 / ((GEOM.pixel_arcmin * ARCMIN) ** 2 * planck_derivative(150.0))  # uK of an 8 mJy source
    assert np.mean(t <= top * (1 + 1e-9)) > 0.97  # most pixels hold one source (a few hold two)
    # one source: |P| = p T exactly; two with different angles: less
    assert np.all(p <= 0.05 * t * (1 + 1e-9)) and np.mean(np.isclose(p, 0.05 * t, rtol=1e-9)) > 0.97
    s = fg.fluxes(200000, rng)
    assert s.min() >= 1.0 and s.max() <= 8.0
    # dN/dS ~ S^-2.5: the fraction above 2 mJy is (2^-1.5 - 8^-1.5) / (1 - 8^-1.5)
    assert np.mean(s > 2.0) == pytest.approx((2**-1.5 - 8**-1.5) / (1 - 8**-1.5), abs=0.005)


def test_residuals_are_observed_like_the_cmb_and_leave_the_truth_alone(fiducial):
    """The observed maps of a simulator with foregrounds are those without, plus the beam-convolved residuals of
    their own streams; the lensed sky and kappa are unchanged."""
    inst = Instrument(1.0, 1.0 / np.sqrt(2), 1.0)
    fg = Foregrounds.from_config({"sources": {"per_deg2": 30.0}, "dust": {"d80_ee_uk2": 0.1}})
    names = ["T", "Q", "U", "Q_lensed", "kappa"]
    plain = FlatSimulator(GEOM, fiducial, inst).sample(4, 2, names)
    with_fg = FlatSimulator(GEOM, fiducial, inst, foregrounds=fg).sample(4, 2, names)
    from deepcmb.sample import sample_rng
    residual = convolve_beam(GEOM, fg.tqu(GEOM, sample_rng(4, 2, "sources"), sample_rng(4, 2, "dust")), inst)
    for k, name in enumerate("TQU"):
        np.testing.assert_allclose(with_fg[name] - plain[name], residual[k], atol=1e-9)
        assert np.abs(residual[k]).max() > 0.1
    for name in ("Q_lensed", "kappa"):
        np.testing.assert_array_equal(with_fg[name], plain[name])


def test_stage_writes_foregrounds_and_refuses_them_where_they_cannot_be(tmp_path):
    """The simulate stage: a foregrounds section changes T, Q, U only, identically with one or two workers;
    curved geometry with foregrounds is a one-line error; so is an empty flux range."""
    plain = run_simulate(SMALL, {}, tmp_path / "plain.h5", progress=False, workers=1)
    cfg = dict(SMALL, foregrounds={"sources": {"per_deg2": 40.0}, "dust": {"d80_ee_uk2": 0.1}})
    one = run_simulate(cfg, {}, tmp_path / "one.h5", progress=False, workers=1)
    two = run_simulate(cfg, {}, tmp_path / "two.h5", progress=False, workers=2)
    with h5py.File(plain) as a, h5py.File(one) as b, h5py.File(two) as c:
        for name in ("Q_lensed", "U_lensed", "kappa"):
            np.testing.assert_array_equal(a["maps"][name], b["maps"][name])
        for name in ("T", "Q", "U"):
            assert not np.array_equal(a["maps"][name], b["maps"][name])
            np.testing.assert_array_equal(b["maps"][name], c["maps"][name])
    with pytest.raises(ConfigError, match="foregrounds: .* flat maps only"):
        run_simulate(dict(cfg, geometry={"kind": "curved", "shape": [32, 32]}), {}, tmp_path / "c.h5", progress=False)
    with pytest.raises(ConfigError, match="foregrounds.sources.flux_mjy"):
        run_simulate(dict(SMALL, foregrounds={"sources": {"flux_mjy": [5, 1]}}), {}, tmp_path / "d.h5", progress=False)

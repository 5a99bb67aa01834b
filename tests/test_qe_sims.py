"""Quadratic estimators on simulations: unbiased cross with the truth, auto = C + N0 + N1, analytic N0 = MC N0.

Setting of the issue: 128 x 128 maps of 2.34375 arcmin (5 deg), Delta_P = 1 uK-arcmin,
Delta_T = Delta_P / sqrt(2), 1 arcmin beam, CMB 300 <= l <= 3500. The truth is the flat-sky kappa of
the same periodic simulations, so the spectra are compared with the simulations' own truth
spectrum (which removes the cosmic variance of the signal from the comparison).

Measured with these seeds (ratios per bin, printed by ``pytest -s``) and discussed in the issue
note; the tolerances are those of the issue.
"""

import numpy as np
import pytest

from deepcmb import flatsky
from deepcmb.cosmology import CMBSpectra
from deepcmb.qe import QuadraticEstimator
from deepcmb.geometry import interp_spectrum
from deepcmb.sample import FlatSimulator, Instrument, observe
from deepcmb.binning import binned_auto_spectrum, binned_cross_spectrum, binned_fourier_power

pytestmark = pytest.mark.slow

INSTRUMENT = Instrument(beam_fwhm_arcmin=1.0, noise_t_uk_arcmin=1.0 / np.sqrt(2.0), noise_p_uk_arcmin=1.0)
NSIM = 300  # lensed simulations (the issue asks for at least 200)
NPAIR = 150  # antithetic pairs for the Monte-Carlo N1
NGAUSS = 600  # Gaussian (unlensed, lensed-spectra) simulations for the Monte-Carlo N0
TESTED = ("EB", "TT", "MV")
EDGES_CROSS = np.array([100, 250, 400, 550, 700, 850, 1000, 1250, 1500, 1750, 2000.0])
EDGES_AUTO = np.array([100, 300, 500, 700, 1000.0])
EDGES_N0 = np.array([100, 300, 500, 700, 1000, 1300, 1600, 2000.0])


def _stack(sims):
    return {k: np.stack([s[k] for s in sims]) for k in sims[0]}


@pytest.fixture(scope="module")
def qes(geom128, fiducial):
    return {name: QuadraticEstimator(geom128, fiducial, INSTRUMENT, name) for name in TESTED}


@pytest.fixture(scope="module")
def lensed_sims(geom128, fiducial):
    sim = FlatSimulator(geom128, fiducial, INSTRUMENT)
    return _stack([sim.sample(2024, i, fields=("T", "Q", "U", "kappa")) for i in range(NSIM)])


@pytest.fixture(scope="module")
def estimates(qes, lensed_sims):
    return {name: qe.estimate(lensed_sims)["kappa"] for name, qe in qes.items()}


# -- simulation pieces for N1 and MC N0 -----------------------------------------------------------------
def _white(geom, rng):
    """rfft modes of a unit-variance white-noise map."""
    return np.fft.rfft2(rng.standard_normal(geom.shape))


def _gaussian(geom, spectra_rows, rng):
    """Gaussian T, E, B and phi modes (rfft grid, geometry convention) for |l| below Nyquist.

    ``spectra_rows`` is ``(TT, EE, BB, TE, PP)`` at integer multipoles.
    """
    tt, ee, bb, te, pp = (interp_spectrum(c, geom.ell()) for c in spectra_rows)
    band = ((geom.ell() > 0) & (geom.ell() < geom.ell_nyquist)) * geom.pixel_rad
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(tt > 0, te / np.sqrt(tt), 0.0)
    w = [_white(geom, rng) for _ in range(4)]
    t = w[0] * np.sqrt(tt) * band
    e = (w[0] * a + w[1] * np.sqrt(np.maximum(ee - a**2, 0.0))) * band
    return t, e, w[2] * np.sqrt(bb) * band, w[3] * np.sqrt(pp) * band


def _unlensed(geom, spectra, rng):
    t, e, _, _ = _gaussian(geom, (*spectra.unlensed[:2], 0 * spectra.clpp, spectra.unlensed[3], spectra.clpp), rng)
    q, u = geom.eb2qu(e, np.zeros_like(e))
    return np.stack([geom.fourier2map(t), q + 1j * u])


def _lens_observe(geom, fields, phi_f, noise_seed):
    dy, dx = flatsky.deflection(geom, phi_f)
    lensed = flatsky.lens_nufft(geom, fields, dy, dx)
    return observe(geom, (lensed[0].real, lensed[1].real, lensed[1].imag), INSTRUMENT,
                   np.random.default_rng(noise_seed))


@pytest.fixture(scope="module")
def n1_pairs(geom128, fiducial):
    """Pairs (A, B, B-): A and B share phi but not CMB or noise; B- is B lensed by -phi.

    The Gaussian part of the bilinear spectra is even in phi_B, the N1 part odd, so
    ``N1 = [C(A, B) - C(A, B-)] / 2`` with the N0-like scatter cancelling between the two.
    """
    a, b, bm = [], [], []
    for i in range(NPAIR):
        ua = _unlensed(geom128, fiducial, np.random.default_rng([7, i, 0]))
        ub = _unlensed(geom128, fiducial, np.random.default_rng([7, i, 1]))
        phi = _gaussian(geom128, (*fiducial.unlensed, fiducial.clpp), np.random.default_rng([7, i, 2]))[3]
        a.append(_lens_observe(geom128, ua, phi, [7, i, 3]))
        b.append(_lens_observe(geom128, ub, phi, [7, i, 4]))
        bm.append(_lens_observe(geom128, ub, -phi, [7, i, 4]))
    return _stack(a), _stack(b), _stack(bm)


def _kappa_power(geom, qe, x, y, edges):
    """Binned C[kappa(x, y), kappa(x, y) + kappa(y, x)] of bilinear estimates, averaged over the stack."""
    l2 = 0.5 * geom.ell() ** 2
    xy, _ = qe.phi_fourier(x, y)
    yx, _ = qe.phi_fourier(y, x)
    return binned_fourier_power(geom, xy * l2, (xy + yx) * l2, edges).mean(axis=0)


@pytest.fixture(scope="module")
def n1(geom128, qes, n1_pairs):
    a, b, bm = n1_pairs
    return {name: 0.5 * (_kappa_power(geom128, qe, a, b, EDGES_AUTO) - _kappa_power(geom128, qe, a, bm, EDGES_AUTO))
            for name, qe in qes.items()}


@pytest.fixture(scope="module")
def gaussian_sims(geom128, fiducial):
    """Unlensed Gaussian skies with the lensed spectra (T, E, B), beam and noise: no lensing trispectrum."""
    out = []
    for i in range(NGAUSS):
        rng = np.random.default_rng([11, i])
        t, e, b, _ = _gaussian(geom128, (*fiducial.lensed, 0 * fiducial.clpp), rng)
        q, u = geom128.eb2qu(e, b)
        out.append(observe(geom128, (geom128.fourier2map(t), q, u), INSTRUMENT, rng))
    return _stack(out)


# -- tests ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TESTED)
def test_cross_with_truth_is_unbiased(name, geom128, lensed_sims, estimates):
    """<kappa_hat kappa> / <kappa kappa> = 1 within 2% for 100 <= L <= 2000."""
    truth = binned_auto_spectrum(geom128, lensed_sims["kappa"], EDGES_CROSS).mean(axis=0)
    cross = binned_cross_spectrum(geom128, estimates[name], lensed_sims["kappa"], EDGES_CROSS).mean(axis=0)
    ratio = cross / truth
    print(f"\n{name} cross/C_kk per bin {EDGES_CROSS.astype(int).tolist()}: {np.round(ratio, 4).tolist()}")
    np.testing.assert_allclose(ratio, 1.0, atol=0.02)


@pytest.mark.parametrize("name", TESTED)
def test_auto_minus_n0_matches_signal_plus_n1(name, geom128, qes, lensed_sims, estimates, n1):
    """Auto - analytic N0 = C_kk + N1 within 10% of C_kk for L <= 1000 (N1 from simulations)."""
    truth = binned_auto_spectrum(geom128, lensed_sims["kappa"], EDGES_AUTO).mean(axis=0)
    auto = binned_auto_spectrum(geom128, estimates[name], EDGES_AUTO).mean(axis=0)
    n0 = qes[name].n0_binned(EDGES_AUTO)
    excess = (auto - n0) / truth
    ratio = (auto - n0 - n1[name]) / truth
    print(f"\n{name} bins {EDGES_AUTO.astype(int).tolist()}: (auto-N0)/C {np.round(excess, 3).tolist()}, "
          f"N1/C {np.round(n1[name] / truth, 3).tolist()}, (auto-N0-N1)/C {np.round(ratio, 3).tolist()}")
    np.testing.assert_allclose(ratio, 1.0, atol=0.10)
    assert np.all(n1[name] > 0)  # the excess over C + N0 is the positive N1 bias


@pytest.mark.parametrize("name", TESTED)
def test_analytic_n0_matches_monte_carlo(name, geom128, qes, gaussian_sims):
    """Analytic N0 = mean auto-spectrum of estimates on unlensed (Gaussian) simulations, within 3%."""
    qe = qes[name]
    kappa = qe.estimate(gaussian_sims)["kappa"]
    mc = binned_auto_spectrum(geom128, kappa, EDGES_N0).mean(axis=0)
    ratio = mc / qe.n0_binned(EDGES_N0)
    print(f"\n{name} MC N0 / analytic N0 per bin {EDGES_N0.astype(int).tolist()}: {np.round(ratio, 4).tolist()}")
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)


def test_wiener_filtered_kappa(geom128, qes, lensed_sims):
    """The Wiener-filtered estimate has <k_WF k> = W C_kk: the transfer function a network is compared with."""
    qe = qes["MV"]
    wf = qe.estimate(lensed_sims, wiener=True)["kappa"]
    kf = geom128.map2fourier(lensed_sims["kappa"])
    expected = binned_fourier_power(geom128, qe.wiener_filter() * kf, kf, EDGES_CROSS).mean(axis=0)
    cross = binned_cross_spectrum(geom128, wf, lensed_sims["kappa"], EDGES_CROSS).mean(axis=0)
    np.testing.assert_allclose(cross / expected, 1.0, atol=0.02)


def test_eb_sign_with_primordial_b(geom128, fiducial):
    """With unlensed C^BB = C^EE the BB term of f^EB is as large as the EE term; a wrong sign would
    make the response vanish. The EB estimate must stay unbiased on such skies."""
    from camb import correlations

    unlensed = fiducial.unlensed.copy()
    unlensed[2] = unlensed[1]
    ell = fiducial.ell
    dl = ell * (ell + 1) / (2 * np.pi)
    lensed = correlations.lensed_cls((unlensed * dl).T.copy(), fiducial.clpp * (ell * (ell + 1)) ** 2 / (2 * np.pi))
    with np.errstate(divide="ignore", invalid="ignore"):
        lensed = np.where(dl > 0, lensed[: ell.size, :4].T / dl, 0.0)
    spectra = CMBSpectra(fiducial.params, unlensed, lensed, fiducial.clpp, gradient=lensed)
    sim = FlatSimulator(geom128, spectra, INSTRUMENT, include_b=True)
    sims = _stack([sim.sample(99, i, fields=("Q", "U", "kappa")) for i in range(150)])
    qe = QuadraticEstimator(geom128, spectra, INSTRUMENT, "EB", response="lensed")
    kappa = qe.estimate(sims)["kappa"]
    edges = np.array([100, 600, 1200, 2000.0])
    ratio = (binned_cross_spectrum(geom128, kappa, sims["kappa"], edges).mean(axis=0)
             / binned_auto_spectrum(geom128, sims["kappa"], edges).mean(axis=0))
    print(f"\nEB with C^BB = C^EE: cross/C_kk {np.round(ratio, 3).tolist()}")
    np.testing.assert_allclose(ratio, 1.0, atol=0.1)  # a wrong sign gives ~0

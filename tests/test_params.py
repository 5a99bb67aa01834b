"""Params stage, pure parts: calibration, likelihood and its covariance, sampler, derived amplitude, config.

No CAMB here: theory band powers are synthetic. Band powers of Gaussian fields are drawn from their
real Fourier degrees of freedom (``n_modes`` per band, l and -l counted apart), so auto, cross and truth
spectra carry the exact joint scatter of a reconstruction ``T kappa + n``.
"""

import numpy as np
import pytest

from deepcmb.errors import ConfigError, InputError
from deepcmb.params import resolve_config
from deepcmb.params.calibration import calibrate_qe, calibrate_transfer
from deepcmb.params.emulator import KappaEmulator
from deepcmb.params.likelihood import (BandPowerLikelihood, amplitude_exponents, build_likelihood,
                                       derived_amplitude, hartlap_factor)
from deepcmb.params.sampling import run_emcee

MODES = np.array([24, 40, 56, 72, 88, 104])
CLKK = 1e-7 * (1.0 + np.arange(6)) ** -1.5
TRANSFER = np.linspace(0.95, 0.6, 6)
NOISE = np.full(6, 2e-8)


def band_powers(rng, n_maps, clkk, transfer=TRANSFER, noise=NOISE, modes=MODES):
    """Per-map (auto, cross, truth), each (n_maps, nb), of T kappa + n with Gaussian kappa and n."""
    out = np.empty((3, n_maps, modes.size))
    for b, m in enumerate(modes):
        k = np.sqrt(clkk[b]) * rng.standard_normal((n_maps, m))
        rec = transfer[b] * k + np.sqrt(noise[b]) * rng.standard_normal((n_maps, m))
        out[:, :, b] = [(rec * rec).mean(1), (rec * k).mean(1), (k * k).mean(1)]
    return out


def alens_emulator(clkk=CLKK):
    return KappaEmulator(["Alens"], {"Alens": 1.0}, [], np.log(clkk))


def gls_alens(lik):
    """Closed-form posterior mean and std of Alens for the linear model (flat prior far away)."""
    s = lik.transfer**2 * lik.emulator(np.array([1.0]))
    f = s @ lik.precision @ s
    return s @ lik.precision @ (lik.data - lik.noise) / f, f**-0.5


def test_calibration_recovers_transfer_and_noise():
    rng = np.random.default_rng(1)
    n = 400
    auto, cross, truth = band_powers(rng, n, CLKK)
    cal = calibrate_transfer(auto, cross, truth)
    # error of T from the scatter of cross/truth ~ sqrt(N / (C m n)); of N from (4 T^2 C N + 2 N^2) / (m n)
    t_err = np.sqrt(NOISE / (CLKK * MODES * n))
    n_var = (4 * TRANSFER**2 * CLKK * NOISE + 2 * NOISE**2) / (MODES * n)
    assert np.all(np.abs(cal.transfer - TRANSFER) < 4 * t_err)
    assert np.all(np.abs(cal.noise - NOISE) < 4 * np.sqrt(n_var))
    # the calibrated noise is only as uncertain as the noise: its variance is the analytic one
    assert np.allclose(np.diag(cal.noise_covariance), n_var, rtol=0.25)
    # the auto covariance is the Gaussian 2 (T^2 C + N)^2 / m
    assert np.allclose(np.diag(cal.auto_covariance), 2 * (TRANSFER**2 * CLKK + NOISE) ** 2 / MODES, rtol=0.25)


def test_qe_calibration_measures_n1_and_n0_only_is_exact():
    rng = np.random.default_rng(2)
    n0 = np.full(6, 3e-8)
    n1 = 0.1 * n0
    auto, _, truth = band_powers(rng, 300, CLKK, transfer=np.ones(6), noise=n0 + n1)
    calibrated, n0_only = calibrate_qe(auto, truth, n0)
    err = np.sqrt(np.diag(calibrated.noise_covariance))
    assert np.all(np.abs(calibrated.noise - n0 - n1) < 4 * err)
    assert np.all(calibrated.transfer == 1) and np.all(n0_only.transfer == 1)
    assert np.array_equal(n0_only.noise, n0) and not n0_only.noise_covariance.any()
    with pytest.raises(InputError, match="N0"):
        calibrate_qe(auto, truth, n0[:3])


def test_hartlap_factor():
    assert hartlap_factor(100, 10) == pytest.approx(88 / 99)
    with pytest.raises(InputError, match="too few"):
        hartlap_factor(12, 10)


def test_errors_have_unit_pull_scatter_over_realisations():
    """Covariance (calibration scatter / n_test + noise-calibration error, Hartlap) gives honest errors."""
    rng = np.random.default_rng(3)
    n_cal, n_test, alens = 40, 20, 1.2
    pulls, naive = [], []
    for _ in range(300):
        cal = calibrate_transfer(*band_powers(rng, n_cal, CLKK))
        data = band_powers(rng, n_test, alens * CLKK)[0].mean(0)
        lik = build_likelihood(data, cal, n_test, alens_emulator(), [0.0], [5.0])
        mean, std = gls_alens(lik)
        pulls.append((mean - alens) / std)
        # the same, leaving out the error of the calibrated noise
        cov = lik.covariance - cal.noise_covariance
        lik = BandPowerLikelihood(data, cov, hartlap_factor(n_cal, 6), alens_emulator(), cal.transfer,
                                  cal.noise, [0.0], [5.0])
        mean, std = gls_alens(lik)
        naive.append((mean - alens) / std)
    pulls, naive = np.array(pulls), np.array(naive)
    assert abs(pulls.mean()) < 0.2
    assert 0.85 < pulls.std() < 1.15
    # leaving out the error of the calibrated noise understates the errors
    assert naive.std() > 1.15


def test_posterior_recovers_alens_with_fisher_error():
    rng = np.random.default_rng(4)
    n_cal, n_test, alens = 200, 100, 1.15
    cal = calibrate_transfer(*band_powers(rng, n_cal, CLKK))
    data = band_powers(rng, n_test, alens * CLKK)[0].mean(0)
    lik = build_likelihood(data, cal, n_test, alens_emulator(), [0.3], [2.0])
    chain = run_emcee(lik, lik.lower, lik.upper, walkers=16, steps=600, burn=200, seed=5, key=0, progress=False)
    samples = chain.flat()[:, 0]
    mean, std = samples.mean(), samples.std()
    # analytic Fisher error of the truth model: Gaussian band powers plus the noise-calibration error
    signal = TRANSFER**2 * CLKK
    var = 2 * (alens * signal + NOISE) ** 2 / (MODES * n_test) \
        + (4 * TRANSFER**2 * CLKK * NOISE + 2 * NOISE**2) / (MODES * n_cal)
    fisher = np.sum(signal**2 / var) ** -0.5
    assert abs(mean - alens) < 2 * std
    assert std == pytest.approx(fisher, rel=0.15)
    assert std == pytest.approx(lik.fisher_std(chain.best())[0], rel=0.1)
    assert mean == pytest.approx(gls_alens(lik)[0], abs=0.1 * std)
    assert 0.2 < chain.acceptance < 0.9


def test_sampler_is_reproducible_and_keyed():
    lik = BandPowerLikelihood(CLKK, np.diag((0.05 * CLKK) ** 2), 1.0, alens_emulator(), np.ones(6), np.zeros(6),
                              [0.3], [2.0])
    a = run_emcee(lik, lik.lower, lik.upper, 8, 50, 10, seed=7, key=3, progress=False)
    b = run_emcee(lik, lik.lower, lik.upper, 8, 50, 10, seed=7, key=3, progress=False)
    c = run_emcee(lik, lik.lower, lik.upper, 8, 50, 10, seed=7, key=4, progress=False)
    assert a.samples.shape == (40, 8, 1)
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.log_prob, b.log_prob)
    assert not np.array_equal(a.samples, c.samples)


def test_derived_amplitude_exponent_of_a_power_law():
    """C^kk = Alens (As/As0)^p: the exponent is recovered and the two parameters are fully degenerate."""
    p, as0 = 1.3, 2.1e-9
    grid = np.linspace(1.5e-9, 2.7e-9, 6)
    table = np.log(CLKK)[None, :] + p * np.log(grid / as0)[:, None]
    emu = KappaEmulator(["Alens", "As"], {"Alens": 1.0, "As": as0}, [grid], table)
    theta0 = emu.base_theta()
    assert np.allclose(emu(np.array([[1.5, 2.4e-9]])), 1.5 * CLKK * (2.4 / 2.1) ** p, rtol=1e-3)
    lik = BandPowerLikelihood(CLKK, np.diag((0.05 * CLKK) ** 2), 1.0, emu, np.ones(6), np.zeros(6),
                              [0.3, 1.5e-9], [2.0, 2.7e-9])
    exponents, correlation = amplitude_exponents(lik, theta0)
    assert exponents == pytest.approx([1.0, p], rel=1e-3)
    assert correlation == pytest.approx([1.0, 1.0], abs=1e-6)
    # along the degeneracy the derived amplitude and the model stay put
    theta = np.array([1.0 / (2.4 / 2.1) ** p, 2.4e-9])
    assert derived_amplitude(theta, emu.names, theta0, exponents) == pytest.approx(1.0, rel=1e-3)
    assert np.allclose(lik.model(theta), CLKK, rtol=1e-3)


@pytest.mark.parametrize("section, field", [
    ({"sampel": ["Alens"]}, "params.sampel"),
    ({"sample": ["Alens", "omch2"]}, "params.priors.omch2"),
    ({"sample": ["Alens", "Omega"]}, "params.sample"),
    ({"priors": {"Alens": [2.0, 1.0]}}, "params.priors.Alens"),
    ({"priors": {"As": [1e-10, 2e-9]}}, "params.priors.As"),
    ({"emulator_points": 3}, "params.emulator_points"),
    ({"walkers": 3}, "params.walkers"),
    ({"steps": 100, "burn": 100}, "params.burn"),
    ({"test_cosmologies": [0, 1]}, "params.test_cosmologies"),
    ({"Lmin": 500, "Lmax": 400}, "params.Lmin"),
    ({"camb": {"lmax": 1000}}, "params.camb.lmax"),
])
def test_bad_config_is_refused_naming_the_field(section, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve_config(section)


def test_config_defaults_and_prior_merge():
    cfg = resolve_config({"sample": ["Alens", "omch2"], "priors": {"omch2": [0.1, 0.14]}})
    assert cfg["priors"] == {"Alens": [0.3, 2.0], "omch2": [0.1, 0.14]}
    assert cfg["walkers"] == 32 and cfg["steps"] == 2000 and cfg["camb"]["lmax"] == 5000

"""Params stage, pure parts: calibration (constant and linear in the parameters), likelihood and its
covariance, sampler, derived amplitude, config.

No CAMB here: theory band powers are synthetic. Band powers of Gaussian fields are drawn from their
real Fourier degrees of freedom (``n_modes`` per band, l and -l counted apart), so auto, cross and truth
spectra carry the exact joint scatter of a reconstruction ``T kappa + n``.
"""

import numpy as np
import pytest

from deepcmb.errors import ConfigError, InputError
from deepcmb.params import resolve_config
from deepcmb.params.calibration import calibrate, calibrate_n0, calibration_design, smoothing_projection
from deepcmb.params.emulator import KappaEmulator
from deepcmb.params.likelihood import (BandPowerLikelihood, amplitude_exponents, build_likelihood,
                                       derived_amplitude, hartlap_factor, posterior_peak)
from deepcmb.params.sampling import run_emcee
from deepcmb.params.sbc import coverage

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


def calibrate_one(maps, alens=1.0):
    """Constant calibration on the (auto, cross, truth) maps of one cosmology, sampling Alens only."""
    return calibrate([[alens]], ["Alens"], *([m] for m in maps))


def unit_response(theta_ref=(1.0,)):
    """A parameter-independent calibration T = 1, N = 0 (its auto statistics unused)."""
    return calibrate_n0(band_powers(np.random.default_rng(0), 8, CLKK)[0], np.zeros(6), theta_ref)


def gls_alens(lik):
    """Closed-form posterior mean and std of Alens for a constant calibration (flat prior far away)."""
    s = lik.calibration.transfer**2 * lik.emulator(np.array([1.0]))
    f = s @ lik.precision @ s
    return s @ lik.precision @ (lik.data - lik.calibration.noise) / f, f**-0.5


def test_calibration_recovers_transfer_and_noise():
    rng = np.random.default_rng(1)
    n = 400
    auto, cross, truth = band_powers(rng, n, CLKK)
    cal = calibrate_one((auto, cross, truth))
    # error of T from the scatter of cross/truth ~ sqrt(N / (C m n)); of N from (4 T^2 C N + 2 N^2) / (m n)
    t_err = np.sqrt(NOISE / (CLKK * MODES * n))
    n_var = (4 * TRANSFER**2 * CLKK * NOISE + 2 * NOISE**2) / (MODES * n)
    assert np.all(np.abs(cal.transfer - TRANSFER) < 4 * t_err)
    assert np.all(np.abs(cal.noise - NOISE) < 4 * np.sqrt(n_var))
    # the calibrated model is only as uncertain as the noise: its variance is the analytic one
    assert np.allclose(np.diag(cal.model_covariance([1.0], CLKK)), n_var, rtol=0.25)
    # the auto covariance is the Gaussian 2 (T^2 C + N)^2 / m
    assert np.allclose(np.diag(cal.auto_covariance), 2 * (TRANSFER**2 * CLKK + NOISE) ** 2 / MODES, rtol=0.25)
    # one cosmology: constant response, no gradient
    assert not cal.fitted and not cal.transfer_gradient.any() and not cal.noise_gradient.any()
    assert np.array_equal(cal.transfer_at([[0.7], [1.3]]), [cal.transfer, cal.transfer])


def test_qe_calibration_measures_n1_and_n0_only_is_exact():
    rng = np.random.default_rng(2)
    n0 = np.full(6, 3e-8)
    n1 = 0.1 * n0
    maps = band_powers(rng, 300, CLKK, transfer=np.ones(6), noise=n0 + n1)
    calibrated, n0_only = calibrate_one(maps), calibrate_n0(maps[0], n0, [1.0])
    err = np.sqrt(np.diag(calibrated.model_covariance([1.0], CLKK)))
    assert np.all(np.abs(calibrated.noise - n0 - n1) < 4 * err)
    assert np.all(np.abs(calibrated.transfer - 1) < 4 * np.sqrt((n0 + n1) / (CLKK * MODES * 300)))
    assert np.all(n0_only.transfer == 1) and n0_only.debias == "n0"
    assert np.array_equal(n0_only.noise, n0) and not n0_only.model_covariance([1.2], CLKK).any()
    with pytest.raises(InputError, match="N0"):
        calibrate_n0(maps[0], n0[:3], [1.0])


def linear_response(alens):
    """Transfer and noise of a method whose response grows with the lensing power."""
    return TRANSFER * (1 + 0.3 * (alens - 1)), NOISE * (1 + 0.5 * (alens - 1))


def test_linear_calibration_gives_unbiased_gradients_and_unit_pull_scatter():
    """T and N linear in Alens, calibrated on three cosmologies: gradients and Alens with honest errors.

    A constant calibration on the reference alone is biased at the test cosmology by many sigma.
    """
    rng = np.random.default_rng(6)
    cal_alens, n_cal, n_test, alens = [1.0, 0.8, 1.2], 40, 20, 1.1
    grad_t, grad_n = 0.3 * TRANSFER, 0.5 * NOISE
    pulls, grad_pulls, stds, constant = [], [], [], []
    for _ in range(200):
        maps = [band_powers(rng, n_cal, a * CLKK, *linear_response(a)) for a in cal_alens]
        cal = calibrate([[a] for a in cal_alens], ["Alens"], *zip(*maps))
        t_err, n_err = cal.gradient_errors()
        grad_pulls.append([(cal.transfer_gradient[0] - grad_t) / t_err[0],
                           (cal.noise_gradient[0] - grad_n) / n_err[0]])
        data = band_powers(rng, n_test, alens * CLKK, *linear_response(alens))[0].mean(0)
        lik = build_likelihood(data, cal, n_test, alens_emulator(), [0.3], [2.0])
        peak = posterior_peak(lik, lik.lower, lik.upper)[0]
        stds.append(lik.fisher_std([peak])[0])
        pulls.append((peak - alens) / stds[-1])
        fixed = build_likelihood(data, calibrate_one(maps[0]), n_test, alens_emulator(), [0.3], [2.0])
        constant.append(gls_alens(fixed)[0] - alens)
    pulls, grad_pulls = np.array(pulls), np.array(grad_pulls)
    assert cal.fitted and cal.fit_dof == 1
    assert abs(pulls.mean()) < 0.2 and 0.85 < pulls.std() < 1.15
    # per-band gradient errors (T and N), pooled over bands
    grad_pulls = grad_pulls.transpose(1, 0, 2).reshape(2, -1)
    assert np.all(np.abs(grad_pulls.mean(1)) < 0.1) and np.all((grad_pulls.std(1) > 0.9) & (grad_pulls.std(1) < 1.1))
    # the constant calibration misses the response's growth: biased by many of the linear fit's errors
    assert np.mean(constant) > 5 * np.mean(stds)


def test_smoothing_projection_keeps_a_quadratic_log_response_and_averages_noise():
    scale = np.linspace(1.0, 3.0, 9)
    x = np.linspace(-1, 1, 9)
    smooth = scale * (0.5 + 0.2 * x - 0.1 * x**2)
    p = smoothing_projection(scale, np.full(9, 0.1), degree=2)
    assert np.allclose(p @ smooth, smooth) and np.allclose(p @ p, p)
    # a projection onto 3 functions: the noise of 9 bands keeps 3 of its 9 degrees of freedom
    assert np.trace(p) == pytest.approx(3.0)
    assert np.array_equal(smoothing_projection(scale[:3], np.ones(3), degree=2), np.eye(3))


def test_alens_marginal_covers_when_the_calibration_gradients_are_noisy():
    """SBC of a nearly degenerate pair (Alens, As) whose separation rests on calibrated gradients.

    A QE-like method (T ~ As, N growing with both) is calibrated on 25 maps of each of five cosmologies
    (the reference and one step to each edge), and fitted to 25 maps of a truth drawn from the prior.
    With per-band gradients the noise of each band adds to the apparent difference of the two
    parameters' responses, and the Alens intervals under-cover (0.56 and 0.89 here); with the gradients'
    log-responses smoothed across bands they cover at their rates (exact grid posteriors, 300 draws:
    binomial errors 0.027 and 0.013).
    """
    rng = np.random.default_rng(3)
    nb = 9
    modes = np.linspace(20, 120, nb).astype(int)
    clkk = 1e-7 * (1.0 + np.arange(nb)) ** -1.5
    transfer, noise = np.linspace(0.95, 0.6, nb), np.full(nb, 2e-8)

    def method(alens, a_s):
        return transfer * a_s, noise * (1 + 0.5 * (alens - 1) + 2 * (a_s - 1))

    grid = np.linspace(0.9, 1.1, 5)
    emulator = KappaEmulator(["Alens", "As"], {"Alens": 1.0, "As": 1.0}, [grid],
                             np.log(clkk)[None, :] + np.log(grid)[:, None])
    lower, upper = np.array([0.8, 0.9]), np.array([1.2, 1.1])
    thetas = [[1.0, 1.0], [0.8, 1.0], [1.2, 1.0], [1.0, 0.9], [1.0, 1.1]]
    alens_grid = np.linspace(0.8, 1.2, 81)
    points = np.stack(np.meshgrid(alens_grid, np.linspace(0.9, 1.1, 81), indexing="ij"), -1)
    ranks = []
    for _ in range(300):
        maps = [band_powers(rng, 25, a * s * clkk, *method(a, s), modes=modes) for a, s in thetas]
        cal = calibrate(thetas, ["Alens", "As"], *zip(*maps))
        truth = rng.uniform(lower, upper)
        data = band_powers(rng, 25, truth[0] * truth[1] * clkk, *method(*truth), modes=modes)[0].mean(0)
        lik = build_likelihood(data, cal, 25, emulator, lower, upper)
        log_p = lik(points)
        marginal = np.exp(log_p - log_p.max()).sum(1)
        cdf = np.concatenate([[0.0], np.cumsum(marginal[1:] + marginal[:-1])])
        ranks.append(np.interp(truth[0], alens_grid, cdf / cdf[-1]))
    assert cal.smooth_dof == nb - 3
    cov = coverage(np.array(ranks))
    assert abs(cov[0.68]["rate"] - 0.68) < 2 * cov[0.68]["error"]
    assert abs(cov[0.95]["rate"] - 0.95) < 2 * cov[0.95]["error"]


def test_calibration_design_needs_every_sampled_parameter_to_vary():
    design, scale = calibration_design([[1.0, 2.1e-9], [0.8, 2.1e-9], [1.0, 1.9e-9]], ["Alens", "As"])
    assert design.shape == (3, 3) and np.allclose(scale, [0.2, 0.2e-9]) and np.abs(design).max() == 1
    with pytest.raises(ValueError, match=r"As = 2\.1e-09 take the same value"):
        calibration_design([[1.0, 2.1e-9], [0.8, 2.1e-9], [1.2, 2.1e-9]], ["Alens", "As"])
    with pytest.raises(ValueError, match="give at least 3"):
        calibration_design([[1.0, 2.1e-9], [0.8, 1.9e-9]], ["Alens", "As"])
    with pytest.raises(ValueError, match="collinear"):
        calibration_design([[1.0, 2.1e-9], [0.8, 1.9e-9], [1.2, 2.3e-9]], ["Alens", "As"])


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
        cal = calibrate_one(band_powers(rng, n_cal, CLKK))
        data = band_powers(rng, n_test, alens * CLKK)[0].mean(0)
        lik = build_likelihood(data, cal, n_test, alens_emulator(), [0.0], [5.0])
        mean, std = gls_alens(lik)
        pulls.append((mean - alens) / std)
        # the same, leaving out the error of the calibration
        cov = lik.covariance - cal.model_covariance([mean], alens_emulator()([mean]))
        lik = BandPowerLikelihood(data, cov, hartlap_factor(n_cal, 6), alens_emulator(), cal, [0.0], [5.0])
        mean, std = gls_alens(lik)
        naive.append((mean - alens) / std)
    pulls, naive = np.array(pulls), np.array(naive)
    assert abs(pulls.mean()) < 0.2
    assert 0.85 < pulls.std() < 1.15
    # leaving out the error of the calibration understates the errors
    assert naive.std() > 1.15


def test_posterior_recovers_alens_with_fisher_error():
    rng = np.random.default_rng(4)
    n_cal, n_test, alens = 200, 100, 1.15
    cal = calibrate_one(band_powers(rng, n_cal, CLKK))
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
    lik = BandPowerLikelihood(CLKK, np.diag((0.05 * CLKK) ** 2), 1.0, alens_emulator(), unit_response(),
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
    lik = BandPowerLikelihood(CLKK, np.diag((0.05 * CLKK) ** 2), 1.0, emu, unit_response(theta0),
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
    ({"calibration_cosmologies": [0, 5], "test_cosmologies": [1, 5]}, "params.test_cosmologies"),
    ({"calibration_cosmologies": [0, 5, 0]}, "params.calibration_cosmologies"),
    ({"calibration_cosmologies": []}, "params.calibration_cosmologies"),
    ({"calibration_cosmologies": 0}, "params.calibration_cosmologies"),
    ({"calibration_cosmology": 0, "calibration_cosmologies": [0]}, "params.calibration_cosmology: give only"),
    ({"calibration_cosmology": [0, 5]}, "params.calibration_cosmology: expected a cosmology index"),
    ({"Lmin": 500, "Lmax": 400}, "params.Lmin"),
    ({"camb": {"lmax": 1000}}, "params.camb.lmax"),
    ({"sample": ["Alens", "Alens"]}, "params.sample: repeated"),
    ({"walkers": None}, "params.walkers: expected an integer >= 2, got null"),
    ({"sample": None}, "params.sample: expected a non-empty list of values from H0"),
])
def test_bad_config_is_refused_naming_the_field(section, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve_config(section)


def test_config_defaults_and_prior_merge():
    cfg = resolve_config({"sample": ["Alens", "omch2"], "priors": {"omch2": [0.1, 0.14]}})
    assert cfg["priors"] == {"Alens": [0.3, 2.0], "omch2": [0.1, 0.14]}
    assert cfg["walkers"] == 32 and cfg["steps"] == 2000 and cfg["camb"]["lmax"] == 5000
    assert cfg["calibration_cosmologies"] == [0] and cfg["test_cosmologies"] is None
    # the older single-cosmology key means a one-element list
    assert resolve_config({"calibration_cosmology": 2})["calibration_cosmologies"] == [2]

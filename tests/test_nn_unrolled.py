"""Unrolled networks (``model.unrolled_steps``): the delensing layer, the network it builds, and its training.

The layer :class:`deepcmb.nn.layers.SubtractLensingB` against the numpy template of :mod:`deepcmb.delensing`
and against the lensing B of simulations; its symmetries; a network with an unrolled step started from a
trained one (``training.init_from``), its frozen first network, saving, and the stage end to end.
"""

import h5py
import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from deepcmb.cli import main  # noqa: E402
from deepcmb.config import resolve  # noqa: E402
from deepcmb.delensing import gradient_b_template, phi_from_kappa, wiener_e_filter  # noqa: E402
from deepcmb.errors import ConfigError  # noqa: E402
from deepcmb.geometry import FlatSkyGeometry  # noqa: E402
from deepcmb.io.reconstruction import open_reconstruction  # noqa: E402
from deepcmb.nn.augment import transform_maps  # noqa: E402
from deepcmb.nn.layers import StokesToEB, SubtractLensingB  # noqa: E402
from deepcmb.nn.model import (build_resunet, freeze_steps, transfer_weights, unrolled_e_filter,  # noqa: E402
                              unrolled_steps)
from deepcmb.nn.reconstruct import at_shape, load_network  # noqa: E402
from deepcmb.nn.settings import MODEL_SCHEMA, check_model_config, resolve_config  # noqa: E402
from deepcmb.nn.train import run_train  # noqa: E402
from deepcmb.sample import Instrument  # noqa: E402

PIXEL = 2.34375
SIMS = {"seed": 11, "n_maps": 40, "geometry": {"shape": [32, 32], "pixel_arcmin": PIXEL},
        "cosmology": {"sampling": "list", "list": [{}]},
        "instrument": {"noise_p_uk_arcmin": [1.0]},
        "simulation": {"fields": ["Q", "U", "Q_lensed", "U_lensed", "E_unlensed", "kappa"], "block_size": 8}}
MODEL = {"inputs": ["E", "B"], "filters": [8, 16], "kernel_size": 3, "activation": "relu", "dropout": 0.0,
         "outputs": ["kappa", "E_unlensed"]}
STATS = {"E": (0.0, 6.0), "B": (0.0, 1.5), "kappa": (0.0, 0.07), "E_unlensed": (0.0, 6.0)}
SURVEY = ["E_wf", "B_wf", "mask", "ivar_p"]


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unrolled")
    (tmp / "sims.yaml").write_text(yaml.safe_dump(SIMS))
    out = tmp / "sims.h5"
    assert main(["simulate", "--config", str(tmp / "sims.yaml"), "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    return out


def _maps(sims, n, *names):
    with h5py.File(sims, "r") as f:
        return [f["maps"][name][:n].astype(np.float64) for name in names]


def _e_filter(fiducial, noise=1.0, beam=1.0):
    return unrolled_e_filter(fiducial, [Instrument(beam, noise / np.sqrt(2), noise)], PIXEL)


def test_layer_is_the_numpy_template(sims, fiducial):
    """Q, U minus the E/B-projected first-order template of deepcmb.delensing, in float32."""
    geom = FlatSkyGeometry((32, 32), PIXEL)
    q, u, kappa = _maps(sims, 6, "Q", "U", "kappa")
    out = np.asarray(SubtractLensingB(PIXEL, _e_filter(fiducial))(
        [np.stack([q, u], -1).astype("float32"), kappa[..., None].astype("float32")]))
    e, _ = geom.qu2eb(q, u)
    phi = phi_from_kappa(geom, geom.map2fourier(kappa))
    phi[..., -1] = 0.0  # the layer's phi is zero on the Nyquist row and column
    phi[..., 16, :] = 0.0
    b_t = gradient_b_template(geom, wiener_e_filter(geom, fiducial.lensed[1], 1.0, 1.0, 0.0, np.inf) * e, phi)
    b_t[..., 16, :] = b_t[..., -1] = 0.0  # and so are the B modes it subtracts
    t_q, t_u = geom.eb2qu(np.zeros_like(b_t), b_t)
    expected = np.stack([q - t_q, u - t_u], -1)
    assert np.abs(out - expected).max() < 1e-4 * np.std(np.stack([t_q, t_u]))
    # the E modes pass unchanged: only B is subtracted (below the Nyquist row and column, where a real map
    # cannot hold a pure-B mode)
    below = np.ones(geom.fourier_shape(), bool)
    below[16, :] = below[:, -1] = False
    e_out = geom.qu2eb(out[..., 0].astype(float), out[..., 1].astype(float))[0]
    np.testing.assert_allclose(e_out[:, below], e[:, below], atol=1e-5 * np.abs(e).max())


def test_the_true_kappa_removes_the_lensing_b(sims, fiducial):
    """On the noise-free lensed sky the template of the true kappa removes nearly all the lensing B power
    at 200 <= l < 2000, and kappa = 0 removes nothing."""
    geom = FlatSkyGeometry((32, 32), PIXEL)
    q, u, kappa = _maps(sims, 20, "Q_lensed", "U_lensed", "kappa")
    layer = SubtractLensingB(PIXEL, _e_filter(fiducial, noise=0.0, beam=0.0))
    band = (geom.ell() >= 200) & (geom.ell() < 2000)

    def b_power(k):
        out = np.asarray(layer([np.stack([q, u], -1).astype("float32"), k[..., None].astype("float32")]))
        return np.mean(np.abs(geom.qu2eb(out[..., 0].astype(float), out[..., 1].astype(float))[1][:, band]) ** 2)

    before = np.mean(np.abs(geom.qu2eb(q, u)[1][:, band]) ** 2)
    assert b_power(np.zeros_like(kappa)) == pytest.approx(before, rel=1e-5)
    assert b_power(kappa) < 0.05 * before
    assert b_power(0.5 * kappa) == pytest.approx(0.25 * before, rel=0.2)  # half the lens: a quarter left


def test_layer_commutes_with_the_grid_symmetries(sims, fiducial):
    q, u, kappa = (m.astype("float32") for m in _maps(sims, 3, "Q", "U", "kappa"))
    layer = SubtractLensingB(PIXEL, _e_filter(fiducial))

    def apply(maps):
        out = np.asarray(layer([np.stack([maps["Q"], maps["U"]], -1), maps["kappa"][..., None]]))
        return {"Q": out[..., 0], "U": out[..., 1]}

    plain = apply({"Q": q, "U": u, "kappa": kappa})
    for k in range(8):
        moved = apply(transform_maps({"Q": q, "U": u, "kappa": kappa}, k))
        expected = transform_maps(plain, k)
        for name in ("Q", "U"):
            np.testing.assert_allclose(moved[name], expected[name], atol=1e-4 * np.abs(q).max(), err_msg=f"{k}")


def test_layer_on_wiener_filtered_maps_is_the_stokes_layer(sims):
    """On E_wf, B_wf (with other channels beside them) the layer subtracts from B what it subtracts from the
    B of Q, U when E_wf is the E of Q, U and the filter one; the E and the other channels pass unchanged."""
    q, u, kappa = _maps(sims, 6, "Q", "U", "kappa")
    qu = np.stack([q, u], -1).astype("float32")
    kappa = kappa[..., None].astype("float32")
    eb = StokesToEB(["Q", "U"], ["E", "B"])
    ones = [1.0] * (int(np.ceil(FlatSkyGeometry((32, 32), PIXEL).ell_nyquist)) + 1)
    expected = np.asarray(eb(SubtractLensingB(PIXEL, ones)([qu, kappa])))
    e_b = np.asarray(eb(qu))
    mask = np.random.default_rng(3).uniform(size=kappa.shape).astype("float32")
    out = np.asarray(SubtractLensingB(PIXEL, None, ["mask", "E_wf", "B_wf"])(
        [np.concatenate([mask, e_b], -1), kappa]))
    np.testing.assert_array_equal(out[..., :2], np.concatenate([mask, e_b[..., :1]], -1))
    assert np.std(e_b[..., 1] - expected[..., 1]) > 0.05 * np.std(e_b[..., 1])  # a template is subtracted...
    np.testing.assert_allclose(out[..., 2], expected[..., 1], atol=1e-5 * np.abs(e_b).max())  # ...the same one
    with pytest.raises(ValueError, match="neither"):
        SubtractLensingB(PIXEL, None, ["E", "B"])


def test_new_step_starts_from_the_trained_network_which_stays_frozen(fiducial, tmp_path):
    cfg = resolve(MODEL, MODEL_SCHEMA)
    base = build_resunet(cfg, (32, 32), STATS, pixel_arcmin=PIXEL)
    rng = np.random.default_rng(0)
    for layer in base.layers:  # trained-looking weights, not the initialiser's
        if layer.get_weights():
            layer.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in layer.get_weights()])
    ef = _e_filter(fiducial)
    one = build_resunet({**cfg, "unrolled_steps": 1}, (32, 32), STATS, pixel_arcmin=PIXEL, e_filter=ef)
    assert unrolled_steps(one) == 1 and unrolled_steps(base) == 0
    assert transfer_weights(one, base) == []
    freeze_steps(one, 1)
    assert one.trainable_weights and all(w.path.startswith("step1_") for w in one.trainable_weights)
    x = rng.normal(0, 3, (4, 32, 32, 2)).astype("float32")
    first = keras.Model(one.inputs, one.get_layer("kappa_step0").output)
    np.testing.assert_allclose(np.asarray(first.predict_on_batch(x)), np.asarray(base.predict_on_batch(x)["kappa"]),
                               rtol=1e-5, atol=1e-7)
    # the new step reads the previous kappa through zero weights: at the start it adds what the trained
    # network computes on the delensed maps
    delensed = keras.Model(one.inputs, one.get_layer("step1_delens").output).predict_on_batch(x)
    np.testing.assert_allclose(np.asarray(one.predict_on_batch(x)["kappa"]),
                               np.asarray(first.predict_on_batch(x)) + base.predict_on_batch(delensed)["kappa"]
                               - STATS["kappa"][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(one.predict_on_batch(x)["E_unlensed"]),  # the first network's E
                               np.asarray(base.predict_on_batch(x)["E_unlensed"]), rtol=1e-5, atol=1e-5)
    path = tmp_path / "one.keras"
    one.save(path)
    again = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(np.asarray(again.predict_on_batch(x)["kappa"]),
                                  np.asarray(one.predict_on_batch(x)["kappa"]))
    big = at_shape(again, (64, 64))  # fully convolutional, delensing included
    assert np.asarray(big.predict_on_batch(np.tile(x, (1, 2, 2, 1)))["kappa"]).shape == (4, 64, 64, 1)
    two = build_resunet({**cfg, "unrolled_steps": 2}, (32, 32), STATS, pixel_arcmin=PIXEL, e_filter=ef)
    transfer_weights(two, one)  # the second step starts from the first step's weights
    np.testing.assert_array_equal(two.get_layer("step2_conv_2").get_weights()[0],
                                  one.get_layer("step1_conv_2").get_weights()[0])
    with pytest.raises(ConfigError, match="unrolled steps"):
        transfer_weights(base, one)


def test_unrolled_steps_need_periodic_stokes_or_filtered_data():
    for bad in ({"inputs": ["E", "B", "mask", "ivar_p"]}, {"padding": "same"}, {"outputs": ["E_unlensed"]},
                {"inputs": ["T", "Q", "U"]}, {"inputs": ["E_wf", "B_wf", "T", "mask"]}):
        with pytest.raises(ConfigError, match="unrolled_steps"):
            check_model_config(resolve({**MODEL, **bad, "unrolled_steps": 1}, MODEL_SCHEMA))
    check_model_config(resolve({**MODEL, "inputs": SURVEY, "unrolled_steps": 1}, MODEL_SCHEMA))
    cfg = resolve_config({"model": {**MODEL, "inputs": ["Q", "U"], "unrolled_steps": 2}})
    assert cfg["model"]["unrolled_steps"] == 2
    with pytest.raises(ConfigError, match="unrolled_steps"):
        build_resunet(resolve({**MODEL, "unrolled_steps": 1}, MODEL_SCHEMA), (32, 32), STATS, pixel_arcmin=PIXEL)


def test_step_of_a_survey_network_reads_its_filtered_maps_delensed(tmp_path):
    """A survey network (E_wf, B_wf, mask, ivar_p) with a step: the step reads the masked channels with B_wf
    delensed, starts as the trained network on them, and the E head stays the first network's."""
    cfg = resolve({**MODEL, "inputs": SURVEY}, MODEL_SCHEMA)
    stats = {**STATS, "E_wf": (0.0, 6.0), "B_wf": (0.0, 1.0), "mask": (0.9, 0.2), "ivar_p": (0.5, 0.3)}
    base = build_resunet(cfg, (32, 32), stats, pixel_arcmin=PIXEL)
    rng = np.random.default_rng(4)
    for layer in base.layers:
        if layer.get_weights():
            layer.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in layer.get_weights()])
    one = build_resunet({**cfg, "unrolled_steps": 1}, (32, 32), stats, pixel_arcmin=PIXEL)
    assert one.get_layer("step1_delens").e_filter is None and transfer_weights(one, base) == []
    x = rng.normal(0, 3, (4, 32, 32, 4)).astype("float32")
    x[..., 2] = rng.uniform(size=x.shape[:3]) > 0.2  # a mask of 0 and 1: applying it twice changes nothing
    x[..., 3] = rng.uniform(0.2, 1.0, x.shape[:3])
    delensed = np.asarray(keras.Model(one.inputs, one.get_layer("step1_delens").output).predict_on_batch(x))
    np.testing.assert_array_equal(delensed[..., [0, 2]], x[..., [0, 2]])
    np.testing.assert_allclose(delensed[..., 3], x[..., 2] * x[..., 3], rtol=1e-6)  # after ApplyMask
    assert np.std(delensed[..., 1] - x[..., 1]) > 1e-3 * np.std(x[..., 1])
    first = base.predict_on_batch(x)
    np.testing.assert_allclose(np.asarray(one.predict_on_batch(x)["kappa"]),
                               np.asarray(first["kappa"]) + base.predict_on_batch(delensed)["kappa"]
                               - stats["kappa"][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(one.predict_on_batch(x)["E_unlensed"]), np.asarray(first["E_unlensed"]),
                               rtol=1e-5, atol=1e-5)
    one.save(tmp_path / "one.keras")
    again = keras.saving.load_model(tmp_path / "one.keras", safe_mode=True, compile=False)
    np.testing.assert_array_equal(np.asarray(again.predict_on_batch(x)["kappa"]),
                                  np.asarray(one.predict_on_batch(x)["kappa"]))


def test_stage_trains_the_new_step_alone_and_reconstructs(sims, tmp_path):
    def train(out, **model):
        cfg = {"seed": 2, "data": {"split": [0.75, 0.25, 0.0]}, "model": {**MODEL, **model},
               "training": {"batch_size": 8, "epochs": 1, "steps_per_epoch": 2,
                            **({"init_from": str(tmp_path / "base")} if model else {})}}
        return run_train(cfg, {"sims": sims}, out, progress=False)

    base = train(tmp_path / "base")
    run = train(tmp_path / "one", unrolled_steps=1)
    first, _ = load_network(base)
    model, spec = load_network(run)
    assert spec["inputs"] == ["Q", "U"] and spec["outputs"] == ["kappa", "E_unlensed"]
    changed = []
    for layer in model.layers:
        if not layer.get_weights():
            continue
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), first.get_layer(
            layer.name[len("step1_"):] if layer.name.startswith("step1_") else layer.name).get_weights()))
        if layer.name.startswith("step1_"):
            changed.append(not same)
        else:
            assert same, f"{layer.name}: the first network trained"
    assert any(changed)
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(run), "--sims", str(sims), "--out", str(out),
                 "--quiet"]) == 0
    with open_reconstruction(out) as f:
        kappa = f["maps"]["kappa"][...]
    assert kappa.shape == (40, 32, 32) and np.all(np.isfinite(kappa))
    x = np.stack(_maps(sims, 40, "Q", "U"), -1).astype("float32")
    np.testing.assert_allclose(kappa, np.asarray(model.predict_on_batch(x)["kappa"])[..., 0], rtol=1e-4, atol=1e-6)


def test_the_shipped_unrolled_network_starts_from_the_shipped_bench_network(fiducial):
    """``--model unrolled``: its first network is the shipped bench network, unchanged (frozen in its trainings),
    its E head that network's, and its delensing filter the fiducial one at the lowest training noise."""
    from deepcmb import shipped

    model, spec = load_network(shipped.network("unrolled"))
    bench, bench_spec = load_network(shipped.network("bench"))
    assert unrolled_steps(model) == 2 and spec["inputs"] == bench_spec["inputs"] == ["Q", "U"]
    x = np.random.default_rng(1).normal(0, 5, (4, 64, 64, 2)).astype("float32")
    first = keras.Model(model.inputs, model.get_layer("kappa_step0").output).predict_on_batch(x)
    expected = bench.predict_on_batch(x)
    np.testing.assert_allclose(np.asarray(first), np.asarray(expected["kappa"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x)["E_unlensed"]),
                               np.asarray(expected["E_unlensed"]), rtol=1e-5, atol=1e-4)
    lowest = min(spec["noise_p_uk_arcmin"])
    for step in (1, 2):
        np.testing.assert_allclose(model.get_layer(f"step{step}_delens").e_filter,
                                   _e_filter(fiducial, noise=lowest, beam=spec["beam_fwhm_arcmin"]), rtol=1e-6)


def test_the_shipped_survey_network_delenses_its_filtered_maps_once():
    """``--model survey``: the survey network followed by one step on ``E_wf``, ``B_wf`` (no E filter of its
    own), trained from the earlier shipped survey network."""
    from deepcmb import shipped

    model, spec = load_network(shipped.network("survey"))
    assert unrolled_steps(model) == 1 and spec["inputs"] == SURVEY
    layer = model.get_layer("step1_delens")
    assert layer.e_filter is None and layer.names == SURVEY
    assert spec["card"]["config"]["training"]["init_from"] == "survey"


def test_the_shipped_5uk_network_is_the_bench_network_fine_tuned_at_5uk_with_one_step(fiducial):
    """``--model unrolled_5uk``: one step after a first network trained from the shipped bench network on
    5 uK-arcmin maps alone (so its weights differ from the bench network's), the step's E filter at 5 uK-arcmin."""
    from deepcmb import shipped

    model, spec = load_network(shipped.network("unrolled_5uk"))
    bench, _ = load_network(shipped.network("bench"))
    assert unrolled_steps(model) == 1 and spec["noise_p_uk_arcmin"] == [5.0]
    assert spec["card"]["config"]["model"] == {**spec["card"]["config"]["model"], "inputs": ["E", "B"],
                                               "filters": [16, 32, 64, 128, 256], "unrolled_steps": 1}
    x = np.random.default_rng(2).normal(0, 8, (2, 64, 64, 2)).astype("float32")
    first = np.asarray(keras.Model(model.inputs, model.get_layer("kappa_step0").output).predict_on_batch(x))
    assert not np.allclose(first, np.asarray(bench.predict_on_batch(x)["kappa"]), rtol=1e-3, atol=0)
    np.testing.assert_allclose(model.get_layer("step1_delens").e_filter,
                               _e_filter(fiducial, noise=5.0, beam=spec["beam_fwhm_arcmin"]), rtol=1e-6)

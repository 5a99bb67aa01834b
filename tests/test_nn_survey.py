"""Networks that take the mask and the noise map (survey networks, ``--model survey``).

The ``mask`` and ``ivar_p`` input channels: what a file without them gives, the ApplyMask layer, fresh
training maps with the file's survey, widening a network by these channels (``training.init_from``), and
reconstruction of masked maps, which other networks refuse; the Wiener-filtered inputs ``E_wf``, ``B_wf``
(:mod:`deepcmb.nn.wiener`) from the filter to training, reconstruction and the Python API.
"""

import h5py
import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from deepcmb.cli import main  # noqa: E402
from deepcmb.errors import ConfigError, InputError  # noqa: E402
from deepcmb.flatsky import gaussian_beam  # noqa: E402
from deepcmb.nn.augment import transform_maps  # noqa: E402
from deepcmb.nn.data import MapSource  # noqa: E402
from deepcmb.nn.wiener import TOLERANCE, WienerInputs  # noqa: E402
from deepcmb.nn.layers import ApplyMask  # noqa: E402
from deepcmb.nn.model import build_resunet, transfer_weights  # noqa: E402
from deepcmb.nn.onthefly import FreshBatches  # noqa: E402
from deepcmb.nn.settings import MODEL_SCHEMA, resolve_config  # noqa: E402
from deepcmb.nn.train import run_train  # noqa: E402
from deepcmb.config import resolve  # noqa: E402
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum  # noqa: E402
from deepcmb.survey import edge_window  # noqa: E402
from deepcmb.io.reconstruction import open_reconstruction  # noqa: E402

PIXEL = 2.34375
BASE = {"seed": 7, "n_maps": 48, "geometry": {"shape": [32, 32], "pixel_arcmin": PIXEL},
        "cosmology": {"sampling": "list", "list": [{}, {"Alens": 0.8}]},
        "instrument": {"noise_p_uk_arcmin": [1.0, 3.0]},
        "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 8}}
SURVEY = {"periodic": False, "pad": 2.0,
          "mask": {"edge_arcmin": 10.0, "holes_per_deg2": 4.0, "hole_radius_arcmin": 4.0,
                   "hole_apodization_arcmin": 2.0},
          "noise": {"depth_factor": [0.7, 1.5], "correlation_arcmin": 20.0, "stripe_amplitude": 0.5}}
MODEL = {"filters": [8, 16], "kernel_size": 3, "activation": "relu", "dropout": 0.0, "stem_stride": 1,
         "outputs": ["kappa"]}
SURVEY_INPUTS = ["E", "B", "mask", "ivar_p"]


def _simulate(tmp, name, cfg):
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / f"{name}.h5"
    assert main(["simulate", "--config", str(tmp / f"{name}.yaml"), "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("survey")
    return {"plain": _simulate(tmp, "plain", BASE), "masked": _simulate(tmp, "masked", {**BASE, "survey": SURVEY}),
            "cut": _simulate(tmp, "cut", {**BASE, "n_maps": 8, "survey": {"periodic": False}})}


def _train(sims, out, inputs, data=None, **training):
    cfg = {"seed": 1, "data": {"split": [0.75, 0.25, 0.0], **(data or {})}, "model": {**MODEL, "inputs": inputs},
           "training": {"batch_size": 8, "epochs": 1, "steps_per_epoch": 2, **training}}
    return run_train(cfg, {"sims": sims}, out, progress=False)


def test_files_without_survey_maps_give_ones_and_their_white_noise(files):
    source = MapSource(files["plain"])
    rows = np.arange(10)
    assert {"mask", "ivar_p"} <= set(source.available())
    np.testing.assert_array_equal(source.read("mask", rows), 1.0)
    depth = np.array([1.0, 3.0])[source.noise_index[rows]]
    ivar = source.read("ivar_p", rows)
    np.testing.assert_allclose(ivar, np.broadcast_to(((PIXEL / depth) ** 2)[:, None, None], ivar.shape), rtol=1e-6)
    assert len(np.unique(depth)) == 2
    masked = MapSource(files["masked"])  # the file's own maps
    with h5py.File(files["masked"], "r") as f:
        np.testing.assert_array_equal(masked.read("ivar_p", rows), f["ivar_p"][:10])


def test_non_periodic_maps_without_a_mask_get_the_edge_taper_when_asked(files):
    """A network that takes a mask sees non-periodic maps without one through an edge taper (reconstruct's
    edge_arcmin), so the masked maps vanish on the border as in its training; periodic maps get ones."""
    rows = np.arange(3)
    edge = edge_window(FlatSkyGeometry((32, 32), PIXEL), 10.0)
    np.testing.assert_allclose(MapSource(files["cut"], edge_arcmin=10.0).read("mask", rows),
                               np.broadcast_to(edge, (3, 32, 32)), rtol=1e-6)
    assert edge[0].max() < 0.05 and edge[16, 16] == 1.0
    np.testing.assert_array_equal(MapSource(files["cut"]).read("mask", rows), 1.0)
    np.testing.assert_array_equal(MapSource(files["plain"], edge_arcmin=10.0).read("mask", rows), 1.0)


def test_apply_mask_multiplies_all_but_the_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 4)).astype("float32")
    x[..., 2] = rng.uniform(size=(2, 8, 8))
    y = np.asarray(ApplyMask(["Q", "U", "mask", "ivar_p"])(x))
    np.testing.assert_allclose(y[..., [0, 1, 3]], x[..., [0, 1, 3]] * x[..., 2:3], rtol=1e-6)
    np.testing.assert_array_equal(y[..., 2], x[..., 2])
    with pytest.raises(ValueError, match="no mask"):
        ApplyMask(["Q", "U"])


def test_survey_inputs_are_validated_names():
    cfg = resolve_config({"model": {"inputs": SURVEY_INPUTS}})
    assert cfg["model"]["inputs"] == SURVEY_INPUTS
    with pytest.raises(ConfigError, match="model.inputs"):
        resolve_config({"model": {"inputs": ["Q", "U", "weights"]}})


def test_fresh_maps_follow_the_files_survey(files):
    """With the file's seed the stream remakes the file's masked maps: the same masks, noise maps and data."""
    fresh = FreshBatches(files["masked"], ["Q", "U", "mask", "ivar_p"], ["kappa"], batch_size=8, steps_per_epoch=2)
    fresh.root_seed = BASE["seed"]
    rows, maps = fresh.load(1)
    with h5py.File(files["masked"], "r") as f:
        for name, stored in (("mask", f["mask"]), ("ivar_p", f["ivar_p"]), ("Q", f["maps/Q"]),
                             ("kappa", f["maps/kappa"])):
            truth = stored[rows[0]:rows[-1] + 1]
            np.testing.assert_allclose(maps[name], truth, rtol=0, atol=1e-6 * np.abs(truth).max(), err_msg=name)
    assert maps["mask"].min() == 0 and maps["mask"].max() == 1
    # a file without a survey gives a network that takes one its white noise, as MapSource does
    plain = FreshBatches(files["plain"], ["Q", "U", "mask", "ivar_p"], ["kappa"], batch_size=4, steps_per_epoch=1)
    _, maps = plain.load(0)
    np.testing.assert_array_equal(maps["mask"], 1.0)
    levels = np.array([plain.assignment(i)[1] for i in range(4)])
    np.testing.assert_allclose(maps["ivar_p"][:, 0, 0], (PIXEL / np.array([1.0, 3.0])[levels]) ** 2, rtol=1e-6)


def test_widened_network_computes_what_it_started_from():
    """transfer_weights: with the mask all ones the widened network (new channels' weights zero) predicts
    exactly what the network it started from predicts, whatever the noise map holds."""
    rng = np.random.default_rng(1)
    stats = {"E": (0.0, 5.0), "B": (0.0, 0.5), "mask": (0.8, 0.3), "ivar_p": (5.0, 2.0), "kappa": (0.0, 0.07)}
    small = resolve({**MODEL, "inputs": ["E", "B"], "normalization": "batch"}, MODEL_SCHEMA)
    wide = {**small, "inputs": SURVEY_INPUTS}
    a = build_resunet(small, (32, 32), stats)
    for w in a.weights:  # non-trivial batch-norm statistics and weights
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.1 + (1.0 if "variance" in w.path else 0.0))
    b = build_resunet(wide, (32, 32), stats)
    assert transfer_weights(b, a) == ["mask", "ivar_p"]
    qu = rng.normal(size=(3, 32, 32, 2)).astype("float32") * 5
    extra = np.stack([np.ones((3, 32, 32)), rng.uniform(2, 10, size=(3, 32, 32))], axis=-1).astype("float32")
    pa = np.asarray(a.predict_on_batch(qu)["kappa"])
    pb = np.asarray(b.predict_on_batch(np.concatenate([qu, extra], axis=-1))["kappa"])
    np.testing.assert_allclose(pb, pa, rtol=1e-4, atol=1e-5 * np.abs(pa).max())
    other = build_resunet({**wide, "filters": [8, 32]}, (32, 32), stats)
    with pytest.raises(ConfigError, match="has weights"):
        transfer_weights(other, a)


def test_init_from_widens_only_by_survey_inputs(files, tmp_path):
    start = _train(files["plain"], tmp_path / "start", ["E", "B"])
    wide = _train(files["masked"], tmp_path / "wide", SURVEY_INPUTS, init_from=str(start))
    norm = yaml.safe_load((wide / "normalization.json").read_text())
    before = yaml.safe_load((start / "normalization.json").read_text())
    assert norm["stats"]["E"] == before["stats"]["E"] and "mask" in norm["stats"] and "ivar_p" in norm["stats"]
    assert norm["split"].startswith("init_from") and "mask, ivar_p" in norm["split"]
    with pytest.raises(ConfigError, match="model.inputs"):
        _train(files["masked"], tmp_path / "other", ["Q", "U", "mask", "ivar_p"], init_from=str(start))


def test_survey_network_reconstructs_masked_maps_others_refuse_them(files, tmp_path, capsys):
    survey = _train(files["masked"], tmp_path / "survey", SURVEY_INPUTS)
    plain = _train(files["plain"], tmp_path / "plain", ["E", "B"])
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(survey), "--data", str(files["masked"]),
                 "--out", str(out), "--quiet"]) == 0
    with open_reconstruction(out) as g:
        kappa = g["maps/kappa"][...]
        assert kappa.shape == (48, 32, 32) and np.all(np.isfinite(kappa))
        assert list(g.attrs["model_inputs"]) == ["Q", "U", "mask", "ivar_p"]
    # whatever the file holds where the mask is 0 does not change the reconstruction
    spoiled = tmp_path / "spoiled.h5"
    spoiled.write_bytes(files["masked"].read_bytes())
    with h5py.File(spoiled, "r+") as f:
        hole = f["mask"][...] == 0
        q = f["maps/Q"][...]
        q[hole] = 1e3
        f["maps/Q"][...] = q
    assert hole.any()
    out2 = tmp_path / "rec_spoiled.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(survey), "--data", str(spoiled),
                 "--out", str(out2), "--quiet"]) == 0
    with open_reconstruction(out2) as g:
        np.testing.assert_allclose(g["maps/kappa"][...], kappa, rtol=0, atol=1e-6 * np.abs(kappa).max())
    # the survey network also takes unmasked maps (mask ones, white noise)
    assert main(["reconstruct", "--method", "nn", "--model", str(survey), "--data", str(files["plain"]),
                 "--out", str(tmp_path / "rec_plain.h5"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "--method", "nn", "--model", str(plain), "--data", str(files["masked"]),
                 "--out", str(tmp_path / "refused.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "\n" not in err.strip() and "reads the mask and the noise map (--model survey)" in err
    with pytest.raises(InputError, match="noise-free"):
        from deepcmb.nn.data import uniform_weight
        uniform_weight("ivar_p", (4, 4), PIXEL, [1.0, 0.0], "maps")
    # the Python API reads the mask and the noise map with the maps and predicts what the stage wrote
    import deepcmb

    maps = deepcmb.read_maps(files["masked"])
    assert {"mask", "ivar_p"} <= set(maps.maps)
    net = deepcmb.load_network(survey)
    np.testing.assert_allclose(net.predict(maps)["kappa"], kappa, rtol=0, atol=1e-5 * np.abs(kappa).max())
    with open_reconstruction(tmp_path / "rec_plain.h5") as g:
        plain_kappa = g["maps/kappa"][...]
    np.testing.assert_allclose(net.predict(deepcmb.read_maps(files["plain"]))["kappa"], plain_kappa, rtol=0,
                               atol=1e-5 * np.abs(plain_kappa).max())


def _toy_lensed_cls(lmax=12000):
    """A smooth prior (µK²) for the filter tests: EE falling as l^-2.5 above l = 100, BB 1/20 of it."""
    ell = np.arange(lmax + 1.0)
    ee = 5e-2 * ((ell + 100.0) / 100.0) ** -2.5
    return np.stack([ee * 10, ee, ee / 20, np.zeros_like(ee)])


def test_wiener_inputs_of_periodic_white_noise_maps_are_the_diagonal_filter():
    """Mask of ones, one noise level: the filter is diagonal, E_wf(l) = B C^EE / (B^2 C^EE + sigma^2 Delta^2)
    E_obs(l) (likewise B) on 0 < l < l_Nyquist, which the preconditioned CG reaches in one step."""
    geom = FlatSkyGeometry((32, 32), PIXEL)
    cls = _toy_lensed_cls()
    rng = np.random.default_rng(3)
    q, u = rng.normal(size=(2, 2, 32, 32)) * 3.0
    ivar = np.full((2, 32, 32), 4.0)
    out = WienerInputs(geom, 1.0, periodic=True, lensed_cls=cls)(q, u, np.ones((2, 32, 32)), ivar)
    assert out.shape == (2, 2, 32, 32) and out.dtype == np.float32
    ell = geom.ell()
    beam = gaussian_beam(1.0, ell)
    noise = geom.pixel_rad**2 / 4.0
    for k, (obs, cl) in enumerate(zip(geom.qu2eb(q, u), cls[1:3])):
        c = interp_spectrum(cl, ell)
        band = (ell > 0) & (ell < geom.ell_nyquist)  # the disc inside the Nyquist frequency
        expected = geom.fourier2map(np.where(band, beam * c / (beam**2 * c + noise), 0.0) * obs)
        np.testing.assert_allclose(out[:, k], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_wiener_inputs_ignore_unobserved_pixels_and_commute_with_the_grid_symmetries(files):
    """On masked non-periodic maps: what lies where the mask is 0 does not matter; filtering a rotated or
    reflected map gives the rotated or reflected E_wf and B_wf (B_wf a pseudo-scalar), to the CG's convergence;
    the networks' CG tolerance leaves an error far below the maps' rms."""
    source = MapSource(files["masked"])
    rows = np.arange(2)
    q, u, mask, ivar = (source.read(n, rows).astype(float) for n in ("Q", "U", "mask", "ivar_p"))
    wiener = WienerInputs(source.geom, 1.0, periodic=False, lensed_cls=_toy_lensed_cls())
    out = wiener(q, u, mask, ivar)
    spoiled = np.where(mask == 0, 1e4, q)
    assert (mask == 0).any()
    np.testing.assert_allclose(wiener(spoiled, u, mask, ivar), out, rtol=0, atol=1e-5 * np.abs(out).max())
    for k in (1, 5):
        t = transform_maps({"Q": q, "U": u, "mask": mask, "ivar_p": ivar}, k)
        moved = wiener(t["Q"], t["U"], t["mask"], t["ivar_p"])
        expected = transform_maps({"E_wf": out[:, 0], "B_wf": out[:, 1]}, k)
        for c, name in enumerate(("E_wf", "B_wf")):
            assert np.std(moved[:, c] - expected[name]) < 1e-2 * np.std(expected[name]), (name, k)
    # the border taper: the filtered maps vanish on the patch border, where the network wraps them around
    assert np.abs(out[:, :, 0, :]).max() < 0.05 * np.abs(out).max()
    # with the file's own lensed spectra as the prior, the default tolerance against a converged filter
    with h5py.File(files["masked"], "r") as f:
        cls = f["cosmology/cl_lensed"][0]
    default = WienerInputs(source.geom, 1.0, periodic=False, lensed_cls=cls)(q, u, mask, ivar)
    reference = WienerInputs(source.geom, 1.0, periodic=False, lensed_cls=cls, tolerance=3e-5)(q, u, mask, ivar)
    errors = [np.std(default[:, c] - reference[:, c]) / np.std(reference[:, c]) for c in range(2)]
    assert errors[0] < 0.01 and errors[1] < 0.05


def test_wiener_channels_from_training_to_reconstruction(files, tmp_path):
    """A network on E_wf, B_wf: its file takes the filtered maps (no E/B layer; ApplyMask leaves them as they
    are), it starts from a network on E, B (whose weights carry over), trains on maps filtered once in memory,
    and the stage, the Python API and fresh training maps feed it the same filtered maps."""
    inputs = ["E_wf", "B_wf", "mask", "ivar_p"]
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 4)).astype("float32")
    y = np.asarray(ApplyMask(inputs)(x))
    np.testing.assert_array_equal(y[..., :3], x[..., :3])
    np.testing.assert_allclose(y[..., 3], x[..., 3] * x[..., 2], rtol=1e-6)
    start = _train(files["masked"], tmp_path / "start", SURVEY_INPUTS)
    net = _train(files["masked"], tmp_path / "wf", inputs, data={"in_memory": True}, init_from=str(start))
    norm = yaml.safe_load((net / "normalization.json").read_text())
    assert norm["split"].endswith("train for E_wf, B_wf")
    assert norm["stats"]["B_wf"]["std"] < norm["stats"]["E_wf"]["std"]
    model = keras.saving.load_model(net / "model.keras", safe_mode=True)
    assert "eb_split" not in [layer.name for layer in model.layers]
    # the filtered channels start from the weights of E and B
    before = keras.saving.load_model(start / "model.keras", safe_mode=True)
    stats = {n: (0.0, 1.0) for n in inputs + ["kappa"]}
    wide = build_resunet(resolve({**MODEL, "inputs": inputs}, MODEL_SCHEMA), (32, 32), stats)
    assert transfer_weights(wide, before) == []
    stem = [next(layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)) for m in (wide, before)]
    np.testing.assert_array_equal(stem[0].get_weights()[0], stem[1].get_weights()[0])
    source = MapSource(files["masked"])
    out = tmp_path / "rec_wf.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(net), "--data", str(files["masked"]),
                 "--out", str(out), "--quiet"]) == 0
    with open_reconstruction(out) as g:
        kappa = g["maps/kappa"][...]
        assert list(g.attrs["model_inputs"]) == inputs
    import deepcmb

    predicted = deepcmb.load_network(net).predict(deepcmb.read_maps(files["masked"]))["kappa"]
    np.testing.assert_allclose(predicted, kappa, rtol=0, atol=1e-5 * np.abs(kappa).max())
    fresh = FreshBatches(files["masked"], inputs, ["kappa"], batch_size=4, steps_per_epoch=1)
    fresh.root_seed = BASE["seed"]
    rows, maps = fresh.load(0)
    for name in ("E_wf", "B_wf"):
        truth = source.read(name, rows)
        np.testing.assert_allclose(maps[name], truth, rtol=0, atol=1e-4 * np.abs(truth).max(), err_msg=name)

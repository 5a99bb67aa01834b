"""Training on maps simulated on the fly (``data.on_the_fly``) and the Fourier-weighted kappa loss.

The fresh maps must come from exactly the training file's distribution: made with the file's own seed
they reproduce the file's maps, and their QE channel reproduces the QE stage's file.
"""

import csv

import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from deepcmb.cli import main  # noqa: E402
from deepcmb.errors import ConfigError  # noqa: E402
from deepcmb.geometry import FlatSkyGeometry  # noqa: E402
from deepcmb.io.sims import open_sims  # noqa: E402
from deepcmb.nn.data import MapSource, SimsBatches  # noqa: E402
from deepcmb.nn.layers import StokesToEB  # noqa: E402
from deepcmb.nn.losses import FourierWeightedMSE, inverse_variance_weights  # noqa: E402
from deepcmb.nn.onthefly import FreshBatches, fresh_root_seed  # noqa: E402
from deepcmb.nn.train import run_train  # noqa: E402
from deepcmb.io.reconstruction import open_reconstruction  # noqa: E402

SIMS = {
    "seed": 21, "n_maps": 40, "geometry": {"shape": [32, 32]},
    "cosmology": {"sampling": "list", "list": [{}, {"Alens": 0.8}]},
    "instrument": {"noise_p_uk_arcmin": [1.0, 5.0]},
    "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 8},
}
INPUTS, OUTPUTS = ["Q", "U", "kappa_qe"], ["kappa", "E_unlensed"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("otf")
    (tmp / "sims.yaml").write_text(yaml.safe_dump(SIMS))
    sims, qe = tmp / "sims.h5", tmp / "qe.h5"
    assert main(["simulate", "--config", str(tmp / "sims.yaml"), "--out", str(sims), "--workers", "1",
                 "--quiet"]) == 0
    assert main(["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--data", str(sims), "--out", str(qe),
                 "--quiet"]) == 0
    return sims, qe


def test_with_the_files_seed_the_stream_remakes_the_files_maps_and_qe(files):
    sims, qe = files
    fresh = FreshBatches(sims, INPUTS, OUTPUTS, batch_size=8, steps_per_epoch=3, seed=0, qe_path=qe)
    fresh.root_seed = SIMS["seed"]  # sample i of the stream is then row i of the file
    with open_sims(sims) as f, open_reconstruction(qe) as g:
        assert [fresh.assignment(i) for i in range(40)] == list(zip(f["meta/cosmology_index"][...],
                                                                   f["meta/noise_index"][...]))
        for item in (0, 2):
            rows, maps = fresh.load(item)
            np.testing.assert_array_equal(rows, np.arange(8 * item, 8 * item + 8))
            for name in ("Q", "U", "kappa", "E_unlensed"):
                np.testing.assert_allclose(maps[name], f["maps"][name][rows], rtol=0, atol=1e-6 * np.abs(
                    f["maps"][name][rows]).max(), err_msg=name)
            truth = g["maps/kappa"][rows]
            np.testing.assert_allclose(maps["kappa_qe"], truth, rtol=0, atol=1e-4 * np.abs(truth).max())


def test_e_b_inputs_are_the_flat_sky_split_of_the_observed_q_u_in_file_and_fresh_batches(files):
    sims, qe = files
    source = MapSource(sims, qe)
    assert {"E", "B", "kappa_qe"} <= set(source.available())
    rows = np.arange(8)
    q, u, e, b = (source.read(n, rows).astype(np.float64) for n in ("Q", "U", "E", "B"))
    geom = FlatSkyGeometry((32, 32), source.pixel_arcmin)
    # the split is exact and invertible off the Nyquist lines (no rotated partner on the grid):
    # Q/U rebuilt from the E and B maps are the file's
    q2, u2 = geom.eb2qu(geom.map2fourier(e), geom.map2fourier(b))
    lx, ly = geom.lxly()
    inside = (np.abs(lx) < 0.999 * geom.ell_nyquist) & (np.abs(ly) < 0.999 * geom.ell_nyquist)
    for rebuilt, ref in ((q2, q), (u2, u)):
        np.testing.assert_allclose(geom.fourier2map(geom.map2fourier(rebuilt - ref) * inside), 0, rtol=0,
                                   atol=1e-5 * np.abs(ref).max())
    assert 1e-3 < np.std(b) / np.std(e) < 0.3  # B (lensing + 1-5 uK' noise) is faint next to E
    # fresh batches hand the network the same Q, U as the file at the same seed, and the network's own
    # split of them (its StokesToEB layer, float32 FFTs) is the file-side split
    fresh = FreshBatches(sims, ["Q", "U", "kappa_qe"], OUTPUTS, batch_size=8, steps_per_epoch=3, seed=0, qe_path=qe)
    fresh.root_seed = SIMS["seed"]
    _, maps = fresh.load(0)
    for name, ref in (("Q", q), ("U", u)):
        np.testing.assert_allclose(maps[name], ref, rtol=0, atol=1e-5 * np.abs(ref).max(), err_msg=name)
    split = np.asarray(StokesToEB(["Q", "U"], ["B", "E"])(np.stack([maps["Q"], maps["U"]], axis=-1)))
    for k, ref in enumerate((b, e)):
        np.testing.assert_allclose(split[..., k], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # networks saved with E/B channels and no split layer are still fed from the file
    x, _ = SimsBatches(source, rows, ["B", "E"], OUTPUTS, batch_size=8)[0]
    np.testing.assert_array_equal(x[..., 0], b.astype(np.float32))
    np.testing.assert_array_equal(x[..., 1], e.astype(np.float32))
    source.close()


def test_fresh_batches_never_repeat_and_are_fixed_by_their_position(files):
    sims, qe = files
    a = FreshBatches(sims, INPUTS, OUTPUTS, batch_size=4, steps_per_epoch=3, seed=7, qe_path=qe)
    b = FreshBatches(sims, INPUTS, OUTPUTS, batch_size=4, steps_per_epoch=3, seed=7, qe_path=qe)
    b.offset = 4  # a resumed run: item 0 is the run's batch 4 (epoch 2, batch 1)
    x0, y0 = a[0]
    assert x0.shape == (4, 32, 32, 3) and y0["kappa"].shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(a[0][0], x0)
    np.testing.assert_array_equal(a[4][0], b[0][0])
    assert a.position(4) == (1, 1) and np.array_equal(a.batch_rows(1, 1), np.arange(16, 20))
    with open_sims(sims) as f:
        file_kappa = f["maps/kappa"][...]
    fresh_kappa = np.concatenate([a[i][1]["kappa"][..., 0] for i in range(6)])
    assert not np.allclose(a[1][0], x0)
    assert min(np.abs(file_kappa - k).max() for k in fresh_kappa) > 1e-3 * np.abs(file_kappa).max()
    assert fresh_root_seed(7) != fresh_root_seed(8) and fresh_root_seed(7) != SIMS["seed"]


def test_noise_curriculum_restricts_the_levels_of_its_epochs_then_cycles_through_all(files):
    sims, qe = files
    stages = [{"epochs": 2, "noise_p_uk_arcmin": [5.0]}, {"epochs": 1, "noise_p_uk_arcmin": [1.0]}]
    fresh = FreshBatches(sims, INPUTS, OUTPUTS, batch_size=4, steps_per_epoch=3, seed=7, qe_path=qe,
                         curriculum=stages)
    plain = FreshBatches(sims, INPUTS, OUTPUTS, batch_size=4, steps_per_epoch=3, seed=7, qe_path=qe)
    per_epoch = 4 * 3
    by_epoch = [{fresh.assignment(i) for i in range(e * per_epoch, (e + 1) * per_epoch)} for e in range(5)]
    assert by_epoch[0] == by_epoch[1] == {(0, 1), (1, 1)}      # 5 uK-arcmin only, both cosmologies
    assert by_epoch[2] == {(0, 0), (1, 0)}                     # then 1 uK-arcmin only
    assert by_epoch[3] == by_epoch[4] == {(c, n) for c in (0, 1) for n in (0, 1)}
    assert [fresh.assignment(i) for i in range(36, 60)] == [plain.assignment(i) for i in range(36, 60)]
    # the maps follow: same seed, same sky; a sample moved from 1 to 5 uK-arcmin differs by 4 uK-arcmin of
    # white noise per pixel, a sample already at 5 does not differ at all
    _, moved = fresh.load(0)
    _, cycled = plain.load(0)
    assert [plain.assignment(i)[1] for i in range(4)] == [0, 0, 1, 1]
    np.testing.assert_array_equal(moved["kappa"], cycled["kappa"])
    np.testing.assert_array_equal(moved["Q"][2:], cycled["Q"][2:])
    pixel_arcmin = fresh.geom.pixel_arcmin
    for j in (0, 1):
        assert np.std(moved["Q"][j] - cycled["Q"][j]) == pytest.approx((5.0 - 1.0) / pixel_arcmin, rel=0.08)
    with pytest.raises(ConfigError, match="no noise level 3"):
        FreshBatches(sims, INPUTS, OUTPUTS, batch_size=4, steps_per_epoch=3, qe_path=qe,
                     curriculum=[{"epochs": 1, "noise_p_uk_arcmin": [3.0]}])


@pytest.mark.parametrize("stages, match", [
    ([{"epochs": 1, "noise_p_uk_arcmin": [5.0]}], "on_the_fly"),
    ([{"epochs": 0, "noise_p_uk_arcmin": [5.0]}], "epochs"),
    ([{"epochs": 1, "noise_p_uk_arcmin": []}], "noise_p_uk_arcmin"),
    ([{"epochs": 1}], "expected"),
])
def test_noise_curriculum_config_is_checked(stages, match):
    from deepcmb.nn.settings import resolve_config

    on_the_fly = match != "on_the_fly"
    with pytest.raises(ConfigError, match=match):
        resolve_config({"data": {"on_the_fly": on_the_fly, "noise_curriculum": stages}})


def test_kappa_qe_input_needs_the_qe_file(files):
    with pytest.raises(ConfigError, match="kappa_qe"):
        FreshBatches(files[0], INPUTS, OUTPUTS, batch_size=4, steps_per_epoch=2)


def test_training_on_the_fly_with_the_fourier_loss(files, tmp_path):
    sims, qe = files
    cfg = {"seed": 2, "data": {"split": [0.5, 0.5, 0.0], "on_the_fly": True},
           "model": {"inputs": INPUTS, "outputs": OUTPUTS, "filters": [8, 16]},
           "training": {"batch_size": 8, "epochs": 2, "steps_per_epoch": 3, "loss": "fourier_mse"}}
    run = run_train(cfg, {"sims": sims, "qe": qe}, tmp_path / "run", progress=False)
    with open(run / "history.csv") as f:
        hist = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in hist] == [1, 2]
    assert all(np.isfinite(float(r["val_kappa_loss"])) for r in hist)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["on_the_fly"] is True
    # the checkpoint restores its loss (a resumed run compiles with the same weights)
    model = keras.saving.load_model(run / "checkpoints" / "last.keras")
    assert isinstance(model.loss["kappa"], FourierWeightedMSE)


def test_fourier_loss_is_the_pixel_mse_for_flat_weights_and_weights_modes_otherwise():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 3, 8, 8, 1)).astype("float32")
    flat = FourierWeightedMSE(np.ones((8, 5)))
    np.testing.assert_allclose(float(flat(a, b)), np.mean((a - b) ** 2), rtol=1e-5)
    w = rng.uniform(0, 1, size=(8, 5))
    loss = float(FourierWeightedMSE(w)(a, b))
    # numpy: weights on the full grid by Hermitian symmetry, normalised to mean one
    full = np.empty((8, 8))
    full[:, :5] = w
    full[:, 5:] = w[(-np.arange(8)) % 8][:, 8 - np.arange(5, 8)]
    power = np.abs(np.fft.fft2((b - a)[..., 0])) ** 2
    expect = np.mean(np.sum(full / full.mean() * power, axis=(1, 2))) / 64**2
    np.testing.assert_allclose(loss, expect, rtol=1e-5)
    again = FourierWeightedMSE.from_config(FourierWeightedMSE(w).get_config())
    np.testing.assert_allclose(float(again(a, b)), loss, rtol=1e-6)


def test_inverse_variance_weights_follow_signal_plus_noise_and_floor_outside_the_band():
    geom = FlatSkyGeometry((16, 16), 2.34375)
    ell = geom.ell()
    clkk = 1e-7 * (100.0 / np.maximum(ell, 100.0)) ** 2
    n0 = np.where((ell > 200) & (ell < 3000), 2e-8, np.inf)
    w = inverse_variance_weights(geom, clkk, [n0, 2 * n0])
    band = np.isfinite(n0) & (ell > 0)
    np.testing.assert_allclose(w[band], (0.5 / (clkk + n0) + 0.5 / (clkk + 2 * n0))[band])
    assert np.all(w[~band] == w[band].min())

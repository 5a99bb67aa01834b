"""`deepcmb train` and `deepcmb reconstruct --method nn` end to end on a tiny simulation file.

Covers the run folder, resume (epoch, learning rate, optimizer), the reconstruction layout, the
refusal of mismatched data, NaNs, and the one-line errors of the command line.
"""

import csv
import json
import logging
import shutil

import h5py
import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from deepcmb.cli import main  # noqa: E402
from deepcmb.errors import InputError, OutputExistsError  # noqa: E402
from deepcmb.nn.augment import field_sign, inverse_transform, transform_maps, transform_pixels  # noqa: E402
from deepcmb.nn.data import MapSource, SimsBatches, channel_stats, split_rows  # noqa: E402
from deepcmb.nn.reconstruct import at_shape, load_network, predict_symmetrized  # noqa: E402
from deepcmb.nn.train import run_train  # noqa: E402
from deepcmb.io.reconstruction import open_reconstruction, write_reconstruction  # noqa: E402

SIMS = {
    "seed": 5, "n_maps": 64, "geometry": {"shape": [32, 32]},
    "cosmology": {"sampling": "grid", "grid": {"Alens": [1.0, 0.8]}},
    "simulation": {"fields": ["T", "Q", "U", "E_unlensed", "kappa"], "block_size": 16},
}
# min_delta 1e9: no epoch after the first improves, so patience 1 halves the learning rate every epoch
TRAIN = {
    "seed": 3, "data": {"split": [0.75, 0.125, 0.125]},
    "model": {"filters": [8, 16], "kernel_size": 3, "activation": "relu", "dropout": 0.0},
    "training": {"batch_size": 8, "epochs": 3, "reduce_lr": {"patience": 1, "min_delta": 1.0e9}},
}


def _yaml(path, obj):
    path.write_text(yaml.safe_dump(obj))
    return str(path)


def _simulate(tmp, name, **over):
    out = tmp / name
    assert main(["simulate", "--config", _yaml(tmp / f"{name}.yaml", {**SIMS, **over}), "--out", str(out),
                 "--workers", "1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    return _simulate(tmp_path_factory.mktemp("sims"), "sims.h5")


@pytest.fixture(scope="module")
def trained(sims, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run = tmp / "run"
    assert main(["train", "--config", _yaml(tmp / "train.yaml", TRAIN), "--data", str(sims), "--out", str(run),
                 "--quiet"]) == 0
    return run


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_run_folder(trained, sims):
    for name in ("model.keras", "model.json", "config.yaml", "run.json", "normalization.json", "splits.npz",
                 "history.csv", "checkpoints/best.keras", "checkpoints/last.keras", "checkpoints/last.json"):
        assert (trained / name).exists(), name
    hist = _history(trained)
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3]
    assert {"loss", "val_loss", "kappa_loss", "val_E_unlensed_loss", "learning_rate", "samples_per_s"} <= set(hist[0])
    assert all(np.isfinite(float(r["loss"])) for r in hist)
    assert yaml.safe_load((trained / "config.yaml").read_text())["training"]["batch_size"] == 8
    with np.load(trained / "splits.npz") as s:
        rows = {k: s[k] for k in ("train", "validation", "test")}
    assert [len(rows[k]) for k in ("train", "validation", "test")] == [48, 8, 8]
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(64))
    # the normalisation is that of the training split
    norm = json.loads((trained / "normalization.json").read_text())["stats"]
    with h5py.File(sims) as f:
        q = f["maps/Q"][np.sort(rows["train"])].astype(np.float64)
    np.testing.assert_allclose([norm["Q"]["mean"], norm["Q"]["std"]], [q.mean(), q.std()], rtol=1e-6)
    card = json.loads((trained / "model.json").read_text())
    assert card["inputs"] == ["Q", "U"] and card["outputs"] == ["kappa", "E_unlensed"] and card["shape"] == [32, 32]
    assert card["trained_on"]["path"] == str(sims.resolve())


def test_final_model_equals_best_checkpoint_bit_for_bit(trained, sims):
    final, spec = load_network(trained)
    best, _ = load_network(trained / "checkpoints" / "best.keras")
    src = MapSource(sims)
    x, _ = SimsBatches(src, np.arange(8), spec["inputs"], [], 8)[0]
    a, b = final.predict_on_batch(x), best.predict_on_batch(x)
    for h in a:
        assert np.asarray(a[h]).tobytes() == np.asarray(b[h]).tobytes()
    assert spec["card"]["best_epoch"] in (1, 2, 3)


def test_monitor_picks_the_best_epoch_by_the_named_heads_validation_loss(sims, tmp_path):
    from deepcmb.errors import ConfigError
    from deepcmb.nn.train import monitor_key

    cfg = {**TRAIN, "training": {"batch_size": 8, "epochs": 4, "monitor": "E_unlensed",
                                 "loss_weights": {"kappa": 1.0, "E_unlensed": 1.0e-6}}}
    run = run_train(cfg, {"sims": sims}, tmp_path / "run", progress=False)
    hist = _history(run)
    e_val = [float(r["val_E_unlensed_loss"]) for r in hist]
    state = json.loads((run / "checkpoints" / "last.json").read_text())
    assert state["best"] == [int(np.argmin(e_val)) + 1, pytest.approx(min(e_val), rel=1e-6)]
    assert state["early_stopping"]["best"] == pytest.approx(min(e_val), rel=1e-6)
    assert monitor_key("loss", ["kappa", "E_unlensed"]) == "val_loss"
    assert monitor_key("kappa", ["kappa", "E_unlensed"]) == "val_kappa_loss"
    assert monitor_key("kappa", ["kappa"]) == "val_loss"
    with pytest.raises(ConfigError, match="training.monitor"):
        run_train({**TRAIN, "training": {"monitor": "phi"}}, {"sims": sims}, tmp_path / "bad", progress=False)


def test_resume_continues_at_the_right_epoch_and_learning_rate(trained, sims, tmp_path, caplog):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_train(TRAIN, {"sims": sims}, run, progress=False, callbacks=[Interrupt()])
    state = json.loads((run / "checkpoints/last.json").read_text())
    assert state["epoch"] == 2 and state["learning_rate"] == pytest.approx(5e-4) and not state["finished"]
    assert not (run / "model.keras").exists()
    caplog.set_level(logging.INFO, logger="deepcmb")
    run_train(TRAIN, {"sims": sims}, run, progress=True)
    out = caplog.text
    assert "after epoch 2 (learning rate 0.0005)" in out and "epoch 3/3, loss" in out and "epoch 2/3" not in out
    assert "ETA 0s" in out  # the last epoch
    resumed, straight = _history(run), _history(trained)
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    lrs = [float(r["learning_rate"]) for r in resumed]
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 5e-4], rtol=1e-6)
    np.testing.assert_allclose(lrs, [float(r["learning_rate"]) for r in straight], rtol=0)
    # same seed, deterministic CPU ops: the interrupted run retraces the uninterrupted one
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose([float(r[key]) for r in resumed], [float(r[key]) for r in straight], rtol=1e-5)
    state = json.loads((run / "checkpoints/last.json").read_text())
    assert state["finished"] and state["optimizer_iterations"] == 3 * 6
    assert state["learning_rate"] == pytest.approx(2.5e-4)



def test_time_limit_stops_resumably_after_a_checkpointed_epoch(trained, sims, tmp_path, capsys):
    run, cfg = tmp_path / "run", _yaml(tmp_path / "t.yaml", TRAIN)
    argv = ["train", "--config", cfg, "--sims", str(sims), "--out", str(run), "--quiet"]
    assert main([*argv, "--time-limit", "0"]) == 75  # every epoch is past a zero budget: one epoch per call
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stopped at the time limit (0 min) after epoch 1/3" in err, err
    state = json.loads((run / "checkpoints/last.json").read_text())
    assert state["epoch"] == 1 and not state["finished"] and not state["stopped_early"]
    assert not (run / "model.keras").exists()
    assert main([*argv, "--time-limit", "0"]) == 75
    assert main(argv) == 0  # the same command continues to the end
    resumed, straight = _history(run), _history(trained)
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    for key in ("loss", "val_loss", "learning_rate"):
        np.testing.assert_allclose([float(r[key]) for r in resumed], [float(r[key]) for r in straight], rtol=1e-5)
    assert (run / "model.keras").exists() and json.loads((run / "checkpoints/last.json").read_text())["finished"]
    assert main([*argv, "--time-limit", "0"]) == 2  # finished: nothing left to continue

def test_reconstruct_layout_and_units(trained, sims, tmp_path):
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(trained), "--data", str(sims), "--out", str(out),
                 "--batch-size", "24", "--quiet"]) == 0
    model, spec = load_network(trained)
    with open_reconstruction(out, sims) as f, h5py.File(sims) as s:
        a = f.attrs
        assert (a["format"], a["format_version"], a["method"], a["n_maps"]) == ("deepcmb.reconstruction", 1, "nn", 64)
        assert a["sims_file"] == str(sims.resolve()) and a["sims_created"] == s.attrs["created"]
        assert tuple(a["shape"]) == (32, 32) and a["pixel_arcmin"] == s.attrs["pixel_arcmin"]
        for key in ("deepcmb_version", "git_revision", "stage", "created", "config"):
            assert key in a
        np.testing.assert_array_equal(f["meta/index"][...], np.arange(64))
        for name in ("kappa", "E_unlensed"):
            d = f["maps"][name]
            assert d.shape == (64, 32, 32) and d.dtype == np.float32 and d.chunks == (1, 32, 32)
        x = np.stack([s["maps/Q"][:24], s["maps/U"][:24]], axis=-1)
        pred = model.predict_on_batch(x)
        np.testing.assert_allclose(f["maps/kappa"][:24], np.asarray(pred["kappa"])[..., 0], rtol=1e-5, atol=1e-7)
        # physical units: the E prediction has the amplitude of the unlensed E map, kappa that of kappa
        assert 0.2 < f["maps/E_unlensed"][...].std() / s["maps/E_unlensed"][...].std() < 2
        assert f["maps/kappa"][...].std() < 0.5
    # one split of the training file
    test_out = tmp_path / "rec_test.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(trained), "--data", str(sims), "--out",
                 str(test_out), "--split", "test", "--quiet"]) == 0
    with open_reconstruction(test_out) as f, np.load(trained / "splits.npz") as sp:
        np.testing.assert_array_equal(f["meta/index"][...], sp["test"])
        assert f["maps/kappa"].shape == (8, 32, 32)


def test_e_b_network_trains_and_reconstructs_from_the_files_q_u(sims, tmp_path):
    """A network on the E/B split takes the files' Q and U: its E/B split is a layer of the network, equal
    to the numpy split from which the normalisation statistics come."""
    cfg = {**TRAIN, "model": {**TRAIN["model"], "inputs": ["E", "B"]}, "training": {**TRAIN["training"], "epochs": 1}}
    run, out = tmp_path / "run", tmp_path / "rec.h5"
    assert main(["train", "--config", _yaml(tmp_path / "t.yaml", cfg), "--data", str(sims), "--out", str(run),
                 "--quiet"]) == 0
    assert main(["reconstruct", "--method", "nn", "--model", str(run), "--data", str(sims), "--out", str(out),
                 "--quiet"]) == 0
    model, spec = load_network(run)
    assert spec["inputs"] == ["Q", "U"] and spec["channels"] == ["E", "B"]
    with h5py.File(sims) as s, open_reconstruction(out, sims) as f:
        q, u = s["maps/Q"][:16].astype(np.float64), s["maps/U"][:16].astype(np.float64)
        e, b = MapSource(sims).geom.qu2eb_maps(q, u)
        norm = json.loads((run / "normalization.json").read_text())["stats"]
        assert norm["B"]["std"] < 0.5 * norm["E"]["std"]  # the split is not Q/U under other names
        x = np.stack([q, u], axis=-1).astype(np.float32)
        split = np.asarray(model.get_layer("eb_split")(x))
        for k, ref in enumerate((e, b)):
            np.testing.assert_allclose(split[..., k], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
        pred = model.predict_on_batch(x)
        np.testing.assert_allclose(f["maps/kappa"][:16], np.asarray(pred["kappa"])[..., 0], rtol=1e-4, atol=1e-6)


def test_mismatched_data_is_refused(trained, sims, tmp_path, capsys):
    def fails(data, *extra):
        code = main(["reconstruct", "--method", "nn", "--model", str(trained), "--data", str(data), "--out",
                     str(tmp_path / "x.h5"), "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "x.h5").exists(), err
        return err

    small = _simulate(tmp_path, "small.h5", n_maps=4, geometry={"shape": [16, 16]})
    assert "trained on 32 x 32" in fails(small) and "--any-shape" in fails(small)
    no_u = _simulate(tmp_path, "no_u.h5", n_maps=4, simulation={"fields": ["Q", "kappa"]})
    assert "['U'] not in the file" in fails(no_u)
    kelvin = tmp_path / "kelvin.h5"
    shutil.copy(sims, kelvin)
    with h5py.File(kelvin, "a") as f:
        f["maps/Q"][...] *= 1e-6
    assert "normalisation mismatch" in fails(kelvin)
    assert "not the file the model was trained on" in fails(small, "--split", "test")
    nan = tmp_path / "nan.h5"
    shutil.copy(sims, nan)
    with h5py.File(nan, "a") as f:
        f["maps/U"][40, 3, 4] = np.nan
    assert "row 40" in fails(nan)
    with pytest.raises(InputError, match="reconstructed from"):
        open_reconstruction(write_reconstruction(tmp_path / "r.h5", np.zeros((4, 16, 16)), sims_path=small,
                                                 method="qe", config={}), sims)


def _tiled(sims, path, reps=2):
    """A copy of a periodic simulation file whose maps are each tiled reps x reps times (still periodic)."""
    shutil.copy(sims, path)
    with h5py.File(path, "a") as f:
        for name in list(f["maps"]):
            data, attrs = f["maps"][name][...], dict(f["maps"][name].attrs)
            del f["maps"][name]
            d = f["maps"].create_dataset(name, data=np.tile(data, (1, reps, reps)))
            d.attrs.update(attrs)
        f.attrs["shape"] = np.asarray(f.attrs["shape"]) * reps
    return path


def test_symmetrized_prediction_is_exactly_equivariant(trained, sims, tmp_path, capsys):
    """Averaged over the grid's 8 symmetries, the prediction on a rotated/reflected sky (Q, U transformed
    as spin-2) is the rotated/reflected prediction, exactly; the plain network is equivariant only roughly."""
    for k in range(8):
        m = np.arange(12.0).reshape(3, 4)
        assert np.array_equal(transform_pixels(transform_pixels(m, k), inverse_transform(k)), m)
    model, spec = load_network(trained)
    source = MapSource(sims)
    x, _ = SimsBatches(source, np.arange(4), spec["inputs"], [], 4, split="prediction")[0]
    source.close()
    assert "Q" in spec["inputs"] and "U" in spec["inputs"]
    base = predict_symmetrized(model, x, spec["inputs"], spec["outputs"])
    for k in range(1, 8):
        xk = np.stack([field_sign(n, k) * transform_pixels(x[..., c], k) for c, n in enumerate(spec["inputs"])], -1)
        got = predict_symmetrized(model, xk, spec["inputs"], spec["outputs"])
        for h in spec["outputs"]:
            want = transform_pixels(base[h], k)
            np.testing.assert_allclose(got[h], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    plain = np.asarray(model.predict_on_batch(x)["kappa"])[..., 0]
    assert not np.allclose(plain, base["kappa"], rtol=1e-3, atol=1e-3 * np.abs(plain).max())
    out = tmp_path / "sym.h5"
    assert main(["reconstruct", "--method", "nn", "--model", str(trained), "--data", str(sims), "--out", str(out),
                 "--symmetrize", "--quiet"]) == 0
    with h5py.File(out) as f:
        assert json.loads(f.attrs["config"])["symmetrize"] is True
        np.testing.assert_allclose(f["maps/kappa"][:4], base["kappa"], rtol=1e-4, atol=1e-6 * np.abs(plain).max())
    assert main(["reconstruct", "--method", "qe", "--data", str(sims), "--out", str(tmp_path / "q.h5"),
                 "--symmetrize"]) == 2
    assert "--symmetrize apply to --method nn only" in capsys.readouterr().err


def test_any_shape_applies_the_same_weights_to_larger_maps(trained, sims, tmp_path):
    """A fully convolutional, periodically padded network on a 2 x 2 tiling of a periodic map returns the
    tiling of its output on the map itself: same weights, same padding, nothing tied to the map size."""
    small, big = tmp_path / "small.h5", tmp_path / "big.h5"
    tiled = _tiled(sims, tmp_path / "tiled.h5")
    base = ["reconstruct", "--method", "nn", "--model", str(trained), "--quiet"]
    assert main(base + ["--data", str(sims), "--out", str(small)]) == 0
    assert main(base + ["--data", str(tiled), "--out", str(big), "--any-shape"]) == 0
    with h5py.File(small) as s, h5py.File(big) as b:
        assert b["maps/kappa"].shape == (64, 64, 64) and list(b.attrs["model_shape"]) == [32, 32]
        for head in ("kappa", "E_unlensed"):
            want = np.tile(s[f"maps/{head}"][...], (1, 2, 2))
            np.testing.assert_allclose(b[f"maps/{head}"][...], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    model, _ = load_network(trained)
    with pytest.raises(InputError, match="divisible by 2"):
        at_shape(model, (33, 33))


def test_any_shape_rebuilds_the_e_b_split_for_the_new_maps():
    """A network whose first layer is the E/B split, rebuilt for 2 x 2 tilings of its maps, splits the larger
    maps (its output is the tiling of its output on the map, and the numpy split of the larger map)."""
    import keras

    from deepcmb.geometry import FlatSkyGeometry
    from deepcmb.nn.layers import StokesToEB

    x = keras.Input((16, 16, 2))
    model = keras.Model(x, StokesToEB(["Q", "U"], ["E", "B"], name="eb_split")(x))
    qu = np.random.default_rng(0).standard_normal((3, 16, 16, 2)).astype(np.float32)
    small = np.asarray(model.predict_on_batch(qu))
    tiled = np.tile(qu, (1, 2, 2, 1))
    big = np.asarray(at_shape(model, (32, 32)).predict_on_batch(tiled))
    np.testing.assert_allclose(big, np.tile(small, (1, 2, 2, 1)), atol=1e-5)
    e, b = FlatSkyGeometry((32, 32), 2.0).qu2eb_maps(tiled[..., 0], tiled[..., 1])
    np.testing.assert_allclose(big, np.stack([e, b], axis=-1), atol=1e-5)


def test_nan_in_a_training_batch_stops_with_its_name(sims, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    shutil.copy(sims, bad)
    row = split_rows(64, TRAIN["data"]["split"], TRAIN["seed"])["train"][-1]
    with h5py.File(bad, "a") as f:
        f["maps/kappa"][row, 0, 0] = np.nan

    def fails(cfg):
        code = main(["train", "--config", _yaml(tmp_path / "t.yaml", cfg), "--data", str(bad), "--out",
                     str(tmp_path / "run"), "--quiet", "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    # found while computing the normalisation ...
    assert f"non-finite values in map 'kappa' row {row}" in fails(TRAIN)
    # ... or, for rows the statistics skip, in the batch that carries it
    err = fails({**TRAIN, "data": {**TRAIN["data"], "stats_maps": 8}})
    assert f"map 'kappa' row {row}" in err and "training batch" in err and "of epoch 1" in err, err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_diverging_loss_stops_with_the_batch(sims):
    """The NaN guard raises at the first batch whose loss is not finite, naming the batch and its maps."""
    from deepcmb.nn.callbacks import NanGuard as nan_guard
    from deepcmb.nn.train import TrainingDiverged

    ds = SimsBatches(MapSource(sims), np.arange(48), ["Q", "U"], ["kappa"], 8, seed=3, shuffle=True, endless=True)
    guard = nan_guard(ds)
    guard.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(3, {"loss": 0.5})
    with pytest.raises(TrainingDiverged, match="epoch 2, training batch 4") as err:
        guard.on_train_batch_end(4, {"loss": float("nan")})
    assert str(ds.batch_rows(1, 4)[:3].tolist())[1:-1] in str(err.value) and guard.model.stop_training


def test_cli_errors_are_one_line(trained, sims, tmp_path, capsys):
    def fails(argv, text):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and text in err, err

    cfg = _yaml(tmp_path / "t.yaml", TRAIN)
    fails(["train", "--config", _yaml(tmp_path / "b.yaml", {**TRAIN, "modle": {}}), "--data", str(sims), "--out",
           str(tmp_path / "r")], "did you mean 'model'")
    fails(["train", "--config", _yaml(tmp_path / "c.yaml", {**TRAIN, "model": {"filters": [4] * 7}}),
           "--data", str(sims), "--out", str(tmp_path / "r")], "divisible by 64")
    fails(["train", "--config", _yaml(tmp_path / "d.yaml", {**TRAIN, "model": {"inputs": ["Q", "kappa_qe"]}}),
           "--data", str(sims), "--out", str(tmp_path / "r")], "--qe")
    fails(["train", "--config", cfg, "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")],
          "missing.h5: no such file")
    fails(["train", "--config", cfg, "--data", str(sims), "--out", str(trained)], "already finished")
    other = _yaml(tmp_path / "e.yaml", {**TRAIN, "seed": 4})
    fails(["train", "--config", other, "--data", str(sims), "--out", str(trained)], "--overwrite")
    (tmp_path / "exists.h5").write_text("precious")
    fails(["reconstruct", "--method", "nn", "--model", str(trained), "--data", str(sims), "--out",
           str(tmp_path / "exists.h5")], "--overwrite")
    assert (tmp_path / "exists.h5").read_text() == "precious"
    fails(["reconstruct", "--method", "nn", "--model", str(tmp_path), "--data", str(sims), "--out",
           str(tmp_path / "o.h5")], "no such model file")


def test_batches_stream_and_augment_consistently(sims):
    src = MapSource(sims)
    rows = np.arange(16)
    plain = SimsBatches(src, rows, ["Q", "U"], ["kappa", "E_unlensed"], 8)
    aug = SimsBatches(src, rows, ["Q", "U"], ["kappa", "E_unlensed"], 8, seed=1, shuffle=True, augment=True,
                      drop_remainder=True, endless=True)
    assert len(plain) == 2 and len(aug) == 2 and aug.num_batches is None and aug.position(7) == (3, 1)
    aug.offset = 6  # item 1 is now batch 1 of epoch 3, as in a run resumed after epoch 3
    got_rows, got = aug.load(1)
    again_rows, again = aug.load(1)  # the same epoch and batch give the same maps
    np.testing.assert_array_equal(got_rows, again_rows)
    assert all(np.array_equal(got[n], again[n]) for n in got)
    _, raw = SimsBatches(src, got_rows, ["Q", "U"], ["kappa", "E_unlensed"], 8).load(0)
    seen = set()
    for j in range(8):
        sample = {n: raw[n][j] for n in raw}
        matches = [k for k in range(8)
                   if all(np.array_equal(transform_maps(sample, k)[n], got[n][j]) for n in got)]
        assert matches, f"sample {j}: no single symmetry maps every field of the raw sample to the batch"
        seen.add(matches[0])
    assert len(seen) > 1
    x, y = plain[1]
    assert x.shape == (8, 32, 32, 2) and x.dtype == np.float32 and set(y) == {"kappa", "E_unlensed"}
    assert y["kappa"].shape == (8, 32, 32, 1)
    with h5py.File(sims) as f:
        np.testing.assert_array_equal(x[..., 1], f["maps/U"][8:16])
    stats = channel_stats(src, ["kappa"], rows)
    with h5py.File(sims) as f:
        np.testing.assert_allclose(stats["kappa"][1], f["maps/kappa"][:16].astype(np.float64).std(), rtol=1e-6)


def test_splits_are_fixed_by_the_seed():
    a, b, c = (split_rows(100, [0.8, 0.1, 0.1], seed) for seed in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["test"], c["test"])
    assert [len(a[k]) for k in ("train", "validation", "test")] == [80, 10, 10]


def test_reconstruction_file_io(sims, tmp_path):
    kappa = np.random.default_rng(0).normal(size=(3, 32, 32))
    out = write_reconstruction(tmp_path / "q.h5", kappa, {"phi": kappa * 2}, sims_path=sims, method="qe",
                               config={"estimator": "EB"}, meta={"index": [5, 6, 9]}, attrs={"estimator": "EB"})
    with open_reconstruction(out, sims) as f:
        np.testing.assert_array_equal(f["meta/index"][...], [5, 6, 9])
        np.testing.assert_array_equal(f["maps/kappa"][...], kappa.astype(np.float32))
        assert f["maps/phi"].attrs["units"] == "rad^2" and f.attrs["estimator"] == "EB"
        assert json.loads(f.attrs["config"]) == {"estimator": "EB"}
    with pytest.raises(OutputExistsError):
        write_reconstruction(out, kappa, sims_path=sims, method="qe", config={})
    with pytest.raises(ValueError):
        write_reconstruction(tmp_path / "bad.h5", kappa[:, :8], sims_path=sims, method="qe", config={})
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "bad.h5").exists()


def test_qe_kappa_channel_is_matched_by_row(sims, tmp_path):
    """``kappa_qe`` comes from a QE reconstruction file, matched to the sims rows through /meta/index."""
    with h5py.File(sims) as f:
        truth = f["maps/kappa"][...]
    rows = np.array([9, 2, 5, 40])  # a reconstruction of a few maps, in any order
    qe = write_reconstruction(tmp_path / "qe.h5", truth[rows] * 2.0, sims_path=sims, method="qe", config={},
                              meta={"index": rows})
    src = MapSource(sims, qe)
    assert "kappa_qe" in src.available()
    np.testing.assert_array_equal(src.read("kappa_qe", [40, 2]), 2.0 * truth[[40, 2]])
    x, _ = SimsBatches(src, [5, 9], ["Q", "kappa_qe"], [], 2)[0]
    np.testing.assert_array_equal(x[..., 1], 2.0 * truth[[5, 9]])
    with pytest.raises(InputError, match="no QE reconstruction of sims rows \\[3\\]"):
        src.read("kappa_qe", [3])
    other = _simulate(tmp_path, "other.h5", n_maps=4)
    with pytest.raises(InputError, match="reconstructed from"):
        MapSource(other, qe)


def test_in_memory_training_is_the_same_training(trained, sims, tmp_path):
    """data.in_memory reads the maps once; the weights come out bit-identical to streaming them from the file."""
    cfg = json.loads(json.dumps(TRAIN))
    cfg["data"]["in_memory"] = True
    run = tmp_path / "mem"
    assert main(["train", "--config", _yaml(tmp_path / "t.yaml", cfg), "--data", str(sims), "--out", str(run),
                 "--quiet"]) == 0
    a, _ = load_network(trained)
    b, _ = load_network(run)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.asarray(wa).tobytes() == np.asarray(wb).tobytes()
    source = MapSource(sims)
    held = source.load(["Q", "kappa"], [3, 1, 3])
    assert held == 2 * 2 * 32 * 32 * 4
    np.testing.assert_array_equal(source.read("Q", [1, 3]), MapSource(sims).read("Q", [1, 3]))
    np.testing.assert_array_equal(source.read("Q", [0, 1]), MapSource(sims).read("Q", [0, 1]))  # row 0 not held


def test_a_kappa_input_of_another_estimator_is_refused(sims, tmp_path):
    """A network trained with an EB QE channel refuses an MV_POL QE file (or a MAP file), naming both."""
    from deepcmb.nn.data import read_qe_file
    from deepcmb.nn.reconstruct import check_kappa_input
    from deepcmb.qe.stage import run_reconstruct_qe

    eb = run_reconstruct_qe({"estimator": "EB"}, {"sims": sims}, tmp_path / "eb.h5", progress=False)
    mv = run_reconstruct_qe({"estimator": "MV_POL"}, {"sims": sims}, tmp_path / "mv.h5", progress=False)
    spec = {"card": {"qe_input": read_qe_file(eb, sims).identity}}
    check_kappa_input(spec, MapSource(sims, eb))
    with pytest.raises(InputError, match="a qe MV_POL .* reconstruction; the network's kappa_qe input was trained "
                                         "on a qe EB"):
        check_kappa_input(spec, MapSource(sims, mv))
    check_kappa_input({"card": {"qe_input": {"path": "old card"}}}, MapSource(sims, mv))  # older cards: unchecked


def test_mixed_precision_training_keeps_the_ends_in_float32(sims, tmp_path):
    """training.precision = mixed_bfloat16: convolutions compute in bfloat16, the E/B split, normalisation and
    heads in float32; the loss falls like the float32 run's and the network reconstructs in physical units."""
    cfg = json.loads(json.dumps(TRAIN))
    cfg["training"]["precision"] = "mixed_bfloat16"
    run = tmp_path / "mixed"
    assert main(["train", "--config", _yaml(tmp_path / "t.yaml", cfg), "--data", str(sims), "--out", str(run),
                 "--quiet"]) == 0
    model, spec = load_network(run)
    dtypes = {layer.name: layer.compute_dtype for layer in model.layers}
    assert dtypes["standardize"] == "float32" and dtypes["kappa"] == "float32" and dtypes["kappa_head"] == "float32"
    assert "bfloat16" in {d for name, d in dtypes.items() if name.startswith("conv")} or \
        "bfloat16" in set(dtypes.values())
    losses = [float(r["loss"]) for r in _history(run)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "nn", "--sims", str(sims), "--model", str(run), "--out", str(out),
                 "--quiet"]) == 0
    with h5py.File(out) as f:
        kappa = f["maps/kappa"][...]
    assert kappa.dtype == np.float32 and np.all(np.isfinite(kappa)) and 0 < kappa.std() < 1

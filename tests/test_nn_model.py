"""The ResUNet on the default (tensorflow) backend: shapes, periodic padding, overfitting, exact save/load."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepcmb.config import resolve  # noqa: E402
from deepcmb.errors import ConfigError, InputError  # noqa: E402
from deepcmb.nn.layers import PeriodicPad2D  # noqa: E402
from deepcmb.nn.model import build_resunet, model_spec  # noqa: E402
from deepcmb.nn.settings import MODEL_SCHEMA, check_model_config  # noqa: E402
from deepcmb.nn.reconstruct import load_network  # noqa: E402

TINY = {"filters": [8, 16], "kernel_size": 3, "activation": "relu", "dropout": 0.0}


def _cfg(**over):
    return resolve({**TINY, **over}, MODEL_SCHEMA, prefix="model.")


def _batch(n=4, shape=(16, 16), heads=("kappa", "E_unlensed"), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape, 2)).astype("f4")
    return x, {h: rng.normal(size=(n, *shape, 1)).astype("f4") for h in heads}


def test_paper_default_is_the_deepcmb_design():
    cfg = resolve({}, MODEL_SCHEMA)
    assert (cfg["kernel_size"], cfg["activation"], cfg["dropout"], cfg["normalization"]) == (5, "selu", 0.3, "batch")
    model = build_resunet(cfg, (128, 128))
    assert 7e6 < model.count_params() < 9e6
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Dropout", "Conv2D", "BatchNormalization", "Add", "Concatenate", "PeriodicPad2D"} <= kinds
    assert all(model.get_layer(f"{h}_head").get_config()["activation"] == "linear" for h in cfg["outputs"])


@pytest.mark.parametrize("over", [
    {"stem_stride": 2, "filters": [8, 16, 32]},
    {"padding": "same", "normalization": "none", "activation": "selu", "dropout": 0.3, "blocks": 2, "kernel_size": 5},
])
def test_forward_backward_shapes_and_finite_loss(over):
    cfg = _cfg(**over)
    model = build_resunet(cfg, (16, 16), {"kappa": (0.0, 0.1)}, pixel_arcmin=2.0)
    x, y = _batch()
    out = model(x, training=False)
    assert set(out) == {"kappa", "E_unlensed"}
    assert all(tuple(out[h].shape) == (4, 16, 16, 1) for h in out)
    model.compile(optimizer="adam", loss="mse")
    losses = [model.train_on_batch(x, y) for _ in range(2)]
    assert np.all(np.isfinite(losses))
    spec = model_spec(model)
    assert spec["inputs"] == ["Q", "U"] and spec["shape"] == (16, 16) and spec["pixel_arcmin"] == 2.0
    assert spec["stats"]["kappa"] == (0.0, 0.1)


def test_periodic_padding_is_a_circular_convolution():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 10, 3)).astype("f4")
    conv = keras.layers.Conv2D(4, 3, padding="valid", use_bias=False)
    y = np.asarray(conv(PeriodicPad2D(1)(x)))
    w = np.asarray(conv.kernel)  # (3, 3, cin, cout)
    ref = np.zeros_like(y)
    for a in range(3):
        for b in range(3):
            shifted = np.roll(x, (1 - a, 1 - b), axis=(1, 2))
            ref += np.einsum("nyxc,cd->nyxd", shifted, w[a, b])
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_network_commutes_with_periodic_shifts():
    """With periodic padding, shifting the input by a multiple of 2**depth shifts every output."""
    model = build_resunet(_cfg(), (16, 16))
    x, _ = _batch(2)
    y = model(x, training=False)["kappa"]
    y_shift = model(np.roll(x, (2, -4), axis=(1, 2)), training=False)["kappa"]
    np.testing.assert_allclose(np.roll(np.asarray(y), (2, -4), axis=(1, 2)), np.asarray(y_shift), atol=1e-5)


def test_tiny_model_overfits_a_handful_of_maps():
    keras.utils.set_random_seed(0)
    model = build_resunet(_cfg(filters=[16, 32], outputs=["kappa"]), (16, 16))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    x, y = _batch(8, heads=("kappa",), seed=2)
    first = model.evaluate(x, y, verbose=0)
    for _ in range(200):
        model.train_on_batch(x, y)
    last = model.evaluate(x, y, verbose=0)
    assert last < first / 10, (first, last)


def test_save_load_predict_is_bit_identical(tmp_path):
    model = build_resunet(_cfg(dropout=0.2), (16, 16), {"Q": (0.1, 2.0), "kappa": (0.0, 0.05)}, pixel_arcmin=3.0)
    model.compile(optimizer="adam", loss="mse")
    x, y = _batch()
    for _ in range(3):  # moves the batch-norm statistics away from their initial values
        model.train_on_batch(x, y)
    before = model.predict_on_batch(x)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded, spec = load_network(path)
    after = loaded.predict_on_batch(x)
    for h in before:
        assert np.asarray(before[h]).tobytes() == np.asarray(after[h]).tobytes(), h
    assert spec["stats"]["Q"] == (0.1, 2.0) and spec["pixel_arcmin"] == 3.0 and spec["card"] is None


def test_safe_mode_refuses_code_in_a_model_file(tmp_path):
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    path = tmp_path / "evil.keras"
    model.save(path)
    with pytest.raises(InputError, match="refused or unreadable"):
        load_network(path)


@pytest.mark.parametrize("over, field", [
    ({"filters": [8, 0]}, "model.filters"), ({"kernel_size": 4}, "model.kernel_size"),
    ({"activation": "nonsense"}, "model.activation"), ({"inputs": ["Q", "Q"]}, "model.inputs"),
    ({"outputs": ["kapa"]}, "model.outputs"), ({"dropout": 1.5}, "model.dropout"),
])
def test_bad_model_config(over, field):
    with pytest.raises(ConfigError, match=field):
        check_model_config(_cfg(**over))


def test_map_size_must_suit_the_downsamplings():
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_resunet(_cfg(filters=[4, 8, 16], stem_stride=2), (20, 20))
    with pytest.raises(ConfigError, match="bottleneck"):
        build_resunet(_cfg(filters=[4, 8, 16], kernel_size=5), (4, 4))

"""The neural-network reconstruction: a ResUNet in Keras 3 (tensorflow, jax or torch backend).

Public API
----------
build_resunet(cfg, shape, stats=None, pixel_arcmin=None)
    The network described by the ``model`` section of a training config (:mod:`deepcmb.nn.model`).
``run_train(config, inputs, out, *, overwrite=False, progress=True)``
    ``deepcmb train``: train (or resume) into a run folder (:mod:`deepcmb.nn.train`).
SCHEMA, resolve_config(user)
    The training config: defaults and checks (:mod:`deepcmb.nn.settings`).
compile_model(model, training, stats, sims_path=None, qe=None)
    Optimizer, losses and loss weights of a training config (:mod:`deepcmb.nn.train`).
``run_reconstruct_nn(config, inputs, out, *, overwrite=False, progress=True)``
    ``deepcmb reconstruct --method nn`` (:mod:`deepcmb.nn.reconstruct`).
load_network(path)
    A trained model (Keras safe mode) and what it expects.
SimsBatches, MapSource, split_rows, channel_stats
    The data pipeline (:mod:`deepcmb.nn.data`).
transform_maps
    Spin-2-aware rotations and reflections of maps (:mod:`deepcmb.nn.augment`, NumPy only).

The backend is the one Keras picks at its first import (``KERAS_BACKEND``, default tensorflow); this
package imports Keras only when one of the names above that needs it is first used.
"""

_LAZY = {
    "build_resunet": "model", "model_spec": "model", "MODEL_SCHEMA": "settings",
    "run_train": "train", "compile_model": "train", "SCHEMA": "settings", "resolve_config": "settings",
    "run_reconstruct_nn": "reconstruct", "load_network": "reconstruct", "check_compatible": "reconstruct",
    "SimsBatches": "data", "MapSource": "data", "split_rows": "data", "channel_stats": "data",
    "transform_maps": "augment", "field_sign": "augment",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

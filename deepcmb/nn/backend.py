"""The Keras backend: importing it quietly, seeds, determinism and data parallelism over several devices.

deepcmb imports Keras for its stages through :func:`import_keras` (the stage table calls it before it
imports a stage that runs a network, :attr:`deepcmb.stages.Stage.keras`), which keeps the backend's
start-up lines off stderr (TensorFlow's CUDA probes and CPU-feature notes, absl's pre-init warning,
a failed ``cuInit`` on a machine without a GPU) and turns a backend that cannot be imported into one
clear error. Set the environment variable ``DEEPCMB_BACKEND_LOGS=1`` to see those lines.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from types import ModuleType

from ..errors import BackendError, ConfigError
from ..streams import silenced

BACKENDS = {"tensorflow": "deepcmb", "jax": "'deepcmb[jax]'", "torch": "'deepcmb[torch]'"}
"""Keras backend -> what to ``pip install`` for it (tensorflow comes with deepcmb itself)."""

LOGS_ENV = "DEEPCMB_BACKEND_LOGS"
"""Environment variable: ``1`` shows the backend's start-up lines (see :func:`import_keras`)."""


@functools.cache
def import_keras() -> ModuleType:
    """Import Keras and its backend (``KERAS_BACKEND``, default tensorflow) and list its devices, quietly (once).

    Unless ``DEEPCMB_BACKEND_LOGS=1``: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (TensorFlow's C++ info
    and warnings off), and file descriptor 2 goes to /dev/null during the import and the first device
    query, which print the start-up lines no environment variable silences.

    Returns
    -------
    module
        ``keras``.

    Raises
    ------
    BackendError
        Keras or its backend cannot be imported; the message names the install that brings it.
    """
    quiet = os.environ.get(LOGS_ENV) != "1"
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with silenced(2) if quiet else contextlib.nullcontext():
        try:
            import keras
        except (ImportError, ValueError) as exc:  # keras raises ValueError for an unknown KERAS_BACKEND
            raise _backend_error(exc) from None
        keras.distribution.list_devices()
    return keras


def _backend_error(exc: Exception) -> BackendError:
    """One line for a failed ``import keras``: what is missing and what to install."""
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    if missing == "keras":
        return BackendError(f"Keras cannot be imported ({exc}); install it with pip install deepcmb")
    backend = {"jaxlib": "jax"}.get(missing, missing)
    if backend not in BACKENDS:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    fixes = [f"install it with pip install {BACKENDS[backend]}"] if backend in BACKENDS else []
    others = [b for b in BACKENDS if b != backend and importlib.util.find_spec(b) is not None]
    if others:
        fixes.append(f"set KERAS_BACKEND={'|'.join(others)}")
    return BackendError(f"the Keras backend {backend!r} cannot be imported ({exc})"
                        + ("; " + ", or ".join(fixes) if fixes else ""))


def configure_backend(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and the backend; make tensorflow ops deterministic when asked.

    Parameters
    ----------
    seed : int
        The training seed (:func:`keras.utils.set_random_seed`).
    deterministic : bool
        With the tensorflow backend, :func:`tf.config.experimental.enable_op_determinism` (other
        backends are left as they are).
    """
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # only with the tensorflow backend (jax and torch installs may lack it)

        tf.config.experimental.enable_op_determinism()


def distribution_scope(mode: str, batch_size: int) -> tuple[contextlib.AbstractContextManager, str]:
    """Context in which to build and compile the model for data parallelism over several devices.

    ``auto`` uses every GPU when there are several; ``data_parallel`` uses every device (GPUs, else
    CPUs); ``none`` one device. jax: :class:`keras.distribution.DataParallel` (set globally);
    tensorflow: :class:`tf.distribute.MirroredStrategy`; torch: one device only (a message says so).

    Parameters
    ----------
    mode : {'auto', 'none', 'data_parallel'}
        ``training.distribution``.
    batch_size : int
        ``training.batch_size``; with jax it must be divisible by the number of devices.

    Returns
    -------
    (context manager, str)
        The scope and a description such as ``'jax DataParallel over 4 gpu devices'``.

    Raises
    ------
    ConfigError
        If the batch does not split over the devices, or ``data_parallel`` is asked of torch.
    """
    keras = import_keras()
    backend = keras.backend.backend()
    if mode == "none":
        return contextlib.nullcontext(), "single device"
    if backend == "jax":
        try:
            gpus = keras.distribution.list_devices("gpu")
        except RuntimeError:  # jax without a GPU platform
            gpus = []
        devices = gpus if gpus else keras.distribution.list_devices("cpu")
        if len(devices) < 2 or (mode == "auto" and len(gpus) < 2):
            return contextlib.nullcontext(), "single device"
        if batch_size % len(devices):
            raise ConfigError(f"training.batch_size: {batch_size} is not divisible by the {len(devices)} devices")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), f"jax DataParallel over {len(devices)} devices"
    if backend == "tensorflow":
        import tensorflow as tf  # only with the tensorflow backend (jax and torch installs may lack it)

        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus if gpus else tf.config.list_logical_devices("CPU")
        if len(devices) < 2 or (mode == "auto" and len(gpus) < 2):
            return contextlib.nullcontext(), "single device"
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return strategy.scope(), f"tensorflow MirroredStrategy over {len(devices)} devices"
    if mode == "data_parallel":
        raise ConfigError("training.distribution: data_parallel is implemented for the jax and tensorflow "
                          "backends; with torch train on one GPU (or use KERAS_BACKEND=jax)")
    return contextlib.nullcontext(), "single device"

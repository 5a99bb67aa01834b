"""The Keras backend for training: seeds, determinism and data parallelism over several devices."""

import contextlib

import keras

from ..errors import ConfigError


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

"""The configs of the network stages: ``deepcmb train`` and ``deepcmb reconstruct --method nn``.

Their schemas hold every default and every single-value constraint (:mod:`deepcmb.config`);
:func:`resolve_config` is the one place a training config is validated: what ties values together is
checked there too, the ``model`` section included (:func:`check_model_config`); what depends on the
simulation file (its map shape, its maps, its noise levels) is checked where the file is read. This
module imports no deep-learning backend, so the command line reads the schemas at once.
"""

from __future__ import annotations

from ..config import REQUIRED, Bool, Free, Int, ListOf, Number, OneOf, Str, resolve
from ..errors import ConfigError
from ..fields import FIELDS, SURVEY_INPUTS, WIENER_INPUTS, stored_fields

INPUT_FIELDS = tuple(n for n, f in FIELDS.items() if f.role in ("observed", "reconstruction", "survey"))
"""Allowed input channels: observed maps of the simulation file, their E/B split ``E``, ``B``
(:data:`deepcmb.fields.EB_INPUTS`, made from ``Q`` and ``U`` by a layer of the network), their Wiener filter
``E_wf``, ``B_wf`` with the mask and the noise map (:data:`deepcmb.fields.WIENER_INPUTS`, made before the network,
:mod:`deepcmb.nn.wiener`), ``kappa_qe`` (a QE
reconstruction of the same maps, read from a reconstruction file), and the maps' ``mask`` and noise map
``ivar_p`` (:data:`deepcmb.fields.SURVEY_INPUTS`; 1 and the instrument's white noise for files without
them)."""

OUTPUT_FIELDS = tuple(n for n, f in FIELDS.items() if f.role in ("unlensed", "lensing"))
"""Allowed heads: truth maps of the simulation file (unlensed sky, phi, kappa)."""

MODEL_SCHEMA = {
    "inputs": ListOf(OneOf(REQUIRED, *INPUT_FIELDS), ["Q", "U"], min_len=1, doc="input channels"),
    "outputs": ListOf(OneOf(REQUIRED, *OUTPUT_FIELDS), ["kappa", "E_unlensed"], min_len=1, doc="output heads"),
    "filters": ListOf(Int(min=1), [32, 64, 128, 256], min_len=1, doc="channels at each level (one downsampling "
                                                                     "between levels)"),
    "blocks": Int(1, min=1, doc="residual blocks per level"),
    "kernel_size": Int(5, min=1, doc="convolution kernel side, pixels (odd)"),
    "activation": Str("selu", doc="Keras activation"),
    "normalization": OneOf("batch", "batch", "none", doc="normalisation after each convolution"),
    "dropout": Number(0.3, min=0, lt=1, doc="dropout rate before each convolution"),
    "padding": OneOf("periodic", "periodic", "same", doc="periodic for periodic flat maps, same (zeros) otherwise"),
    "stem_stride": OneOf(1, 1, 2, doc="stride of the first convolution"),
    "unrolled_steps": Int(0, min=0, doc="unrolled delensing steps after the first ResUNet: each subtracts from "
                                        "the data the lensing B its kappa predicts, and a further ResUNet reads "
                                        "the delensed E, B and that kappa and corrects it (E/B or Q/U inputs "
                                        "on periodic maps, or E_wf, B_wf with the mask and noise map)"),
}
"""The ``model`` section of the training config, with its defaults (the DeepCMB design; the network is
described in :mod:`deepcmb.nn.model`)."""

SCHEMA = {
    "seed": Int(1234, min=0, doc="root seed of the split, shuffling, augmentation, fresh maps and weights"),
    "data": {
        "split": ListOf(Number(min=0), [0.8, 0.1, 0.1], min_len=3, max_len=3,
                        doc="train, validation, test fractions of the file's maps"),
        "augment": Bool(True, doc="random rotations and reflections of the grid (spin-2 aware)"),
        "max_maps": Int(None, min=1, doc="use at most this many maps of the file (null: all)"),
        "stats_maps": Int(4096, min=1, doc="training maps used for the channel statistics"),
        "workers": Int(1, min=1, doc="threads preparing batches"),
        "in_memory": Bool(False, doc="read the training and validation maps into memory once (4 bytes a pixel "
                                     "per channel), instead of from the file at every batch"),
        "on_the_fly": Bool(False, doc="train on fresh simulations of the file's configuration"),
        "noise_curriculum": Free([], doc="[{epochs, noise_p_uk_arcmin}]: noise levels of the first epochs "
                                         "(on_the_fly only)"),
    },
    "model": MODEL_SCHEMA,
    "training": {
        "batch_size": Int(32, min=1, doc="maps per step"),
        "epochs": Int(100, min=1, doc="epochs at most"),
        "steps_per_epoch": Int(None, min=1, doc="steps per epoch (null: one pass over the training maps)"),
        "validation_steps": Int(None, min=1, doc="validation batches per epoch (null: all)"),
        "learning_rate": Number(1.0e-3, gt=0, doc="initial Adam learning rate"),
        "init_from": Str(None, doc="start from the weights and normalisation of this network (a shipped "
                                   "network's name, a run folder or a .keras file: fine-tuning); the model "
                                   "section must describe the same network"),
        "loss": OneOf("mse", "mse", "mae", "fourier_mse", doc="loss of each head (fourier_mse: kappa modes "
                                                              "weighted by 1/(C+N0))"),
        "loss_weights": Free({}, doc="head -> weight of its loss (default 1 each)"),
        "clipnorm": Number(None, gt=0, doc="gradient-norm clipping (null: none)"),
        "reduce_lr": {"factor": Number(0.5, gt=0, lt=1, doc="learning-rate factor on a plateau"),
                      "patience": Int(3, min=1, doc="epochs without improvement before reducing"),
                      "min_delta": Number(0.0, doc="improvement that counts"),
                      "min_lr": Number(1.0e-6, min=0, doc="lowest learning rate")},
        "early_stopping": {"patience": Int(10, min=1, doc="epochs without improvement before stopping"),
                           "min_delta": Number(0.0, doc="improvement that counts")},
        "monitor": Str("loss", doc="validation loss followed: 'loss' (the weighted total) or a head"),
        "jit_compile": OneOf("auto", "auto", True, False, doc="XLA compilation of the step"),
        "precision": OneOf("float32", "float32", "mixed_bfloat16", "mixed_float16",
                           doc="arithmetic of the convolutions (mixed: bfloat16 or float16 compute, float32 "
                               "weights; the E/B split, normalisation and heads stay float32)"),
        "deterministic": Bool(True, doc="deterministic kernels (bit-identical runs on one machine)"),
        "distribution": OneOf("auto", "auto", "none", "data_parallel", doc="data parallelism over devices"),
    },
}
"""Config schema of ``deepcmb train`` with its defaults (see ``train/quick.yaml``)."""

RECONSTRUCT_SCHEMA = {
    "batch_size": Int(32, min=1, doc="maps per forward pass"),
    "split": OneOf("all", "all", "train", "validation", "test",
                   doc="the maps reconstructed: all, or one split of the model's training file"),
    "any_shape": Bool(False, doc="apply the (fully convolutional) network to maps of another size, same pixel"),
    "symmetrize": Bool(False, doc="average the prediction over the 8 rotations and reflections of the grid "
                                  "(8 network passes)"),
    "edge_arcmin": Number(15.0, min=0, doc="a network that takes a mask, on non-periodic maps without one: width "
                                           "of the cosine taper along the border given as their mask, arcmin "
                                           "(0: a mask of ones)"),
}
"""Settings of ``deepcmb reconstruct --method nn``, with their defaults."""

CURRICULUM_STAGE = {
    "epochs": Int(REQUIRED, min=1, doc="epochs of the stage"),
    "noise_p_uk_arcmin": ListOf(Number(min=0), REQUIRED, min_len=1, doc="noise levels drawn, uK-arcmin"),
}
"""One stage of ``data.noise_curriculum``."""


def resolve_config(user: dict | None) -> dict:
    """Resolve a training config over :data:`SCHEMA` and check every value that needs no data.

    Parameters
    ----------
    user : dict
        The config as read from YAML (may be partial).

    Returns
    -------
    dict
        The full config; ``training.loss_weights`` filled in to one float per output head (default 1).
        Its ``model`` section is the resolved one :func:`deepcmb.nn.model.build_resunet` takes.

    Raises
    ------
    ConfigError
        Naming the first field whose value is not allowed.
    """
    cfg = resolve(user, SCHEMA)
    check_model_config(cfg["model"])
    d, t = cfg["data"], cfg["training"]
    check_curriculum(d["noise_curriculum"], d["on_the_fly"])
    outputs = cfg["model"]["outputs"]
    if t["loss"] == "fourier_mse" and "kappa" not in outputs:
        raise ConfigError("training.loss: fourier_mse weights the modes of the kappa head; model.outputs has no kappa")
    lw = t["loss_weights"]
    if not isinstance(lw, dict):
        raise ConfigError(f"training.loss_weights: expected a mapping head -> weight, got {lw!r}")
    for head, w in lw.items():
        if head not in outputs:
            raise ConfigError(f"training.loss_weights.{head}: not an output head ({', '.join(outputs)})")
        Number(min=0).check(f"training.loss_weights.{head}", w)
    t["loss_weights"] = {h: float(lw.get(h, 1.0)) for h in outputs}
    if t["monitor"] != "loss" and t["monitor"] not in outputs:
        raise ConfigError(f"training.monitor: 'loss' (the weighted total) or an output head "
                          f"({', '.join(outputs)}), got {t['monitor']!r}")
    return cfg


def check_model_config(cfg: dict) -> None:
    """Check what the leaves of a resolved ``model`` section cannot: distinct channel names, an odd
    kernel, a known activation, unrolled steps only on periodic Stokes data or Wiener-filtered E and B
    (the map shape is :func:`deepcmb.nn.model.check_map_shape`'s).

    Parameters
    ----------
    cfg : dict
        The ``model`` section resolved over :data:`MODEL_SCHEMA`.

    Raises
    ------
    ConfigError
        Naming the first field whose value is not allowed.
    """
    for key, allowed in (("inputs", INPUT_FIELDS), ("outputs", OUTPUT_FIELDS)):
        if len(set(cfg[key])) != len(cfg[key]):
            raise ConfigError(f"model.{key}: expected distinct names from {', '.join(allowed)}, got {cfg[key]!r}")
    takes = stored_fields(cfg["inputs"])
    data = [n for n in takes if n not in SURVEY_INPUTS]
    if cfg["unrolled_steps"] and (not (takes == ["Q", "U"] or data == list(WIENER_INPUTS))
                                  or "kappa" not in cfg["outputs"] or cfg["padding"] != "periodic"):
        raise ConfigError(f"model.unrolled_steps: the delensing of an unrolled step needs the inputs [E, B] or "
                          f"[Q, U] alone, or [E_wf, B_wf] with the mask and noise map, a kappa head and periodic "
                          f"padding; got inputs {cfg['inputs']}, outputs {cfg['outputs']}, padding "
                          f"{cfg['padding']!r}")
    if cfg["kernel_size"] % 2 == 0:
        raise ConfigError(f"model.kernel_size: must be a positive odd integer, got {cfg['kernel_size']!r}")
    from .backend import import_keras  # deferred: the command line reads the schemas above without a backend

    keras = import_keras()

    try:
        keras.activations.get(cfg["activation"])
    except (ValueError, TypeError):
        raise ConfigError(f"model.activation: unknown Keras activation {cfg['activation']!r}") from None


def check_curriculum(stages: object, on_the_fly: bool) -> None:
    """Validate ``data.noise_curriculum``: a list of :data:`CURRICULUM_STAGE` mappings.

    Stage ``k`` trains for ``epochs`` epochs on fresh maps of the listed noise levels only (Q/U
    depths in uK-arcmin, each one of the training file's levels); after the last stage every level
    of the file is used. Needs ``data.on_the_fly`` (the levels of a file's maps are fixed). Whether
    the levels are the file's is checked by :class:`deepcmb.nn.onthefly.FreshBatches`, which reads it.

    Parameters
    ----------
    stages : object
        The ``data.noise_curriculum`` value.
    on_the_fly : bool
        ``data.on_the_fly``.

    Raises
    ------
    ConfigError
    """
    if not isinstance(stages, list):
        raise ConfigError(f"data.noise_curriculum: expected a list of stages, got {stages!r}")
    if stages and not on_the_fly:
        raise ConfigError("data.noise_curriculum: needs data.on_the_fly: true (it chooses the noise level of "
                          "each fresh map)")
    for k, stage in enumerate(stages):
        where = f"data.noise_curriculum[{k}]"
        if not isinstance(stage, dict) or set(stage) != set(CURRICULUM_STAGE):
            raise ConfigError(f"{where}: expected {{epochs: N, noise_p_uk_arcmin: [levels]}}, got {stage!r}")
        resolve(stage, CURRICULUM_STAGE, prefix=f"{where}.")

"""The config of ``deepcmb train``: its schema with defaults, and the checks of every value.

:func:`resolve_config` is the one place a training config is validated. Everything that needs no data
is checked there, the ``model`` section included (:func:`deepcmb.nn.model.check_model_config`); what
depends on the simulation file (its map shape, its maps, its noise levels) is checked where the file
is read.
"""

from ..config import Free, OneOf, resolve
from ..errors import ConfigError
from .model import MODEL_SCHEMA, check_model_config

SCHEMA = {
    "seed": 1234,
    "data": {
        "split": [0.8, 0.1, 0.1],
        "augment": True,
        "max_maps": None,
        "stats_maps": 4096,
        "workers": 1,
        "on_the_fly": False,
        "noise_curriculum": Free([]),
    },
    "model": MODEL_SCHEMA,
    "training": {
        "batch_size": 32,
        "epochs": 100,
        "steps_per_epoch": None,
        "validation_steps": None,
        "learning_rate": 1.0e-3,
        "loss": OneOf("mse", "mse", "mae", "fourier_mse"),
        "loss_weights": Free({}),
        "clipnorm": None,
        "reduce_lr": {"factor": 0.5, "patience": 3, "min_delta": 0.0, "min_lr": 1.0e-6},
        "early_stopping": {"patience": 10, "min_delta": 0.0},
        "monitor": "loss",
        "jit_compile": OneOf("auto", "auto", True, False),
        "deterministic": True,
        "distribution": OneOf("auto", "auto", "none", "data_parallel"),
    },
}
"""Config schema of ``deepcmb train`` with its defaults (see ``train/quick.yaml``)."""


def check_positive_int(value: object, name: str, allow_none: bool = False) -> object:
    """Return ``value`` if it is a positive integer (or, with ``allow_none``, None).

    Parameters
    ----------
    value : object
        The config value (``bool`` is refused, although Python counts it as an ``int``).
    name : str
        Its dotted field name, for the message.
    allow_none : bool
        Accept ``None`` (a field whose null means "no limit").

    Raises
    ------
    ConfigError
        Naming the field and the value.
    """
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return value


def resolve_config(user: dict) -> dict:
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
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {cfg['seed']!r}")
    check_model_config(cfg["model"])
    d, t = cfg["data"], cfg["training"]
    check_positive_int(d["max_maps"], "data.max_maps", allow_none=True)
    check_positive_int(d["stats_maps"], "data.stats_maps")
    check_positive_int(d["workers"], "data.workers")
    if not isinstance(d["on_the_fly"], bool):
        raise ConfigError(f"data.on_the_fly: must be true or false, got {d['on_the_fly']!r}")
    check_curriculum(d["noise_curriculum"], d["on_the_fly"])
    if t["loss"] == "fourier_mse" and "kappa" not in cfg["model"]["outputs"]:
        raise ConfigError("training.loss: fourier_mse weights the modes of the kappa head; model.outputs has no kappa")
    check_positive_int(t["batch_size"], "training.batch_size")
    check_positive_int(t["epochs"], "training.epochs")
    check_positive_int(t["steps_per_epoch"], "training.steps_per_epoch", allow_none=True)
    check_positive_int(t["validation_steps"], "training.validation_steps", allow_none=True)
    if not (isinstance(t["learning_rate"], float) and t["learning_rate"] > 0):
        raise ConfigError(f"training.learning_rate: must be positive, got {t['learning_rate']!r}")
    if t["clipnorm"] is not None and (isinstance(t["clipnorm"], bool) or not isinstance(t["clipnorm"], (int, float))
                                      or t["clipnorm"] <= 0):
        raise ConfigError(f"training.clipnorm: must be positive or null, got {t['clipnorm']!r}")
    lw = t["loss_weights"]
    if not isinstance(lw, dict):
        raise ConfigError(f"training.loss_weights: expected a mapping head -> weight, got {lw!r}")
    for head, w in lw.items():
        if head not in cfg["model"]["outputs"]:
            raise ConfigError(f"training.loss_weights.{head}: not an output head "
                              f"({', '.join(cfg['model']['outputs'])})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"training.loss_weights.{head}: must be a non-negative number, got {w!r}")
    t["loss_weights"] = {h: float(lw.get(h, 1.0)) for h in cfg["model"]["outputs"]}
    if t["monitor"] != "loss" and t["monitor"] not in cfg["model"]["outputs"]:
        raise ConfigError(f"training.monitor: 'loss' (the weighted total) or an output head "
                          f"({', '.join(cfg['model']['outputs'])}), got {t['monitor']!r}")
    rl = t["reduce_lr"]
    if not 0 < rl["factor"] < 1:
        raise ConfigError(f"training.reduce_lr.factor: must lie in (0, 1), got {rl['factor']!r}")
    check_positive_int(rl["patience"], "training.reduce_lr.patience")
    check_positive_int(t["early_stopping"]["patience"], "training.early_stopping.patience")
    return cfg


def check_curriculum(stages: object, on_the_fly: bool) -> None:
    """Validate ``data.noise_curriculum``: a list of ``{epochs: int, noise_p_uk_arcmin: [float, ...]}``.

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
        if not isinstance(stage, dict) or set(stage) != {"epochs", "noise_p_uk_arcmin"}:
            raise ConfigError(f"{where}: expected {{epochs: N, noise_p_uk_arcmin: [levels]}}, got {stage!r}")
        check_positive_int(stage["epochs"], f"{where}.epochs")
        levels = stage["noise_p_uk_arcmin"]
        if (not isinstance(levels, list) or not levels
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in levels)):
            raise ConfigError(f"{where}.noise_p_uk_arcmin: expected a non-empty list of noise levels, got {levels!r}")

"""The ``params:`` section of an evaluate config: schema, defaults and validation."""

from ..config import Free, resolve
from ..cosmology import PARAM_BOUNDS, PARAM_NAMES
from ..errors import ConfigError
from .emulator import MIN_POINTS

DEFAULT_PRIORS = {"Alens": [0.3, 2.0], "As": [1.5e-9, 2.7e-9]}
"""Flat prior ranges used for a sampled parameter the config gives no prior for."""

SCHEMA = {
    "calibration_cosmologies": [0],
    "test_cosmologies": None,
    "noise_index": 0,
    "methods": None,
    "sample": ["Alens", "As"],
    "priors": Free({}),
    "emulator_points": 9,
    "Lmin": 100.0,
    "Lmax": 1500.0,
    "walkers": 32,
    "steps": 2000,
    "burn": 500,
    "seed": 1,
    "camb": {"lmax": 5000, "lens_potential_accuracy": 1},
}
"""Schema of the ``params:`` section with its defaults (see ``evaluate/quick.yaml``).

calibration_cosmologies : list of int
    Cosmologies (rows of the report's ``/cosmology/params``) whose maps calibrate each method's transfer
    and noise. The first is the reference: its maps also give the band-power covariance, and the
    emulator's parameters not sampled are its values. One cosmology: constant transfer and noise;
    several: linear in the sampled parameters, which must all vary among them (at least
    ``1 + len(sample)`` cosmologies). The older ``calibration_cosmology: c`` is still accepted and
    means ``[c]``.
test_cosmologies : list of int or null
    Cosmologies fitted, none of them a calibration cosmology; null: every cosmology not used for
    calibration with maps at ``noise_index``.
noise_index : int
    Noise level of the maps used.
methods : list of str or null
    Method labels of the report to fit; null: all.
sample : list of str
    Sampled parameters: ``Alens`` and/or CAMB parameters of :data:`deepcmb.cosmology.PARAM_NAMES`.
priors : mapping
    ``name: [low, high]`` flat priors, merged over :data:`DEFAULT_PRIORS`; every sampled parameter needs
    one. The CAMB grid of the emulator spans the same ranges.
emulator_points : int
    CAMB evaluations along each sampled CAMB parameter (``emulator_points ** d`` in all).
Lmin, Lmax : float
    Bands lying entirely inside ``[Lmin, Lmax]`` are used.
walkers, steps, burn, seed : int
    emcee ensemble size, chain length, discarded initial steps, root seed.
camb.lmax, camb.lens_potential_accuracy : int
    CAMB settings of the emulator; use those of the simulations (their cached spectra are then reused).
"""


def _index_list(cfg, key, alternative=""):
    value = cfg[key]
    if (not isinstance(value, list) or not value
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value)):
        raise ConfigError(f"params.{key}: expected {alternative}a non-empty list of cosmology indices, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"params.{key}: repeated index in {value}")


def _legacy(user):
    """Map the old ``calibration_cosmology: c`` to ``calibration_cosmologies: [c]``."""
    if not isinstance(user, dict) or "calibration_cosmology" not in user:
        return user
    old = user["calibration_cosmology"]
    if "calibration_cosmologies" in user:
        raise ConfigError("params.calibration_cosmology: give only params.calibration_cosmologies (the old key "
                          "calibration_cosmology: c means calibration_cosmologies: [c])")
    if isinstance(old, bool) or not isinstance(old, int):
        raise ConfigError(f"params.calibration_cosmology: expected a cosmology index, got {old!r} (prefer "
                          "params.calibration_cosmologies, a list whose first entry is the reference)")
    out = {k: v for k, v in user.items() if k != "calibration_cosmology"}
    out["calibration_cosmologies"] = [old]
    return out


def _int_at_least(cfg, key, low):
    value = cfg[key]
    if value < low:
        raise ConfigError(f"params.{key}: must be at least {low}, got {value}")


def _check_priors(cfg):
    priors = cfg["priors"]
    if not isinstance(priors, dict):
        raise ConfigError(f"params.priors: expected a mapping name -> [low, high], got {priors!r}")
    for name in priors:
        if name not in PARAM_NAMES:
            raise ConfigError(f"params.priors.{name}: unknown parameter (known: {', '.join(PARAM_NAMES)})")
    merged = {**DEFAULT_PRIORS, **priors}
    out = {}
    for name in cfg["sample"]:
        if name not in merged:
            raise ConfigError(f"params.priors.{name}: a sampled parameter needs a prior [low, high]")
        rng = merged[name]
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
                or not rng[0] < rng[1]):
            raise ConfigError(f"params.priors.{name}: expected [low, high] with low < high, got {rng!r}")
        lo, hi = PARAM_BOUNDS[name]
        if rng[0] < lo or rng[1] > hi:
            raise ConfigError(f"params.priors.{name}: {list(rng)} leaves the allowed range [{lo}, {hi}]")
        out[name] = [float(rng[0]), float(rng[1])]
    return out


def resolve_config(user):
    """Resolve a ``params:`` section over :data:`SCHEMA` and check every value.

    Parameters
    ----------
    user : dict or None
        The section as given (may be partial).

    Returns
    -------
    dict
        The resolved config; ``priors`` holds exactly the sampled parameters' ranges.

    Raises
    ------
    ConfigError
        Naming the offending field.
    """
    cfg = resolve(_legacy(user), SCHEMA, prefix="params.")
    for key in ("noise_index", "seed"):
        _int_at_least(cfg, key, 0)
    _index_list(cfg, "calibration_cosmologies")
    tests = cfg["test_cosmologies"]
    if tests is not None:
        _index_list(cfg, "test_cosmologies", "null or ")
        shared = sorted(set(tests) & set(cfg["calibration_cosmologies"]))
        if shared:
            raise ConfigError(f"params.test_cosmologies: {shared} also calibrate (params.calibration_cosmologies); "
                              "test on separate simulations")
    methods = cfg["methods"]
    if methods is not None and (not isinstance(methods, list) or not methods
                                or not all(isinstance(m, str) for m in methods)):
        raise ConfigError(f"params.methods: expected null or a list of method labels, got {methods!r}")
    sample = cfg["sample"]
    if not sample or not all(isinstance(p, str) for p in sample):
        raise ConfigError(f"params.sample: expected a non-empty list of parameter names, got {sample!r}")
    for name in sample:
        if name not in PARAM_NAMES:
            raise ConfigError(f"params.sample: unknown parameter {name!r} (known: {', '.join(PARAM_NAMES)})")
    if len(set(sample)) != len(sample):
        raise ConfigError(f"params.sample: repeated parameter in {sample}")
    cfg["priors"] = _check_priors(cfg)
    if any(p != "Alens" for p in sample):
        _int_at_least(cfg, "emulator_points", MIN_POINTS)
    if not 0 <= cfg["Lmin"] < cfg["Lmax"]:
        raise ConfigError(f"params.Lmin, params.Lmax: need 0 <= Lmin < Lmax, got {cfg['Lmin']}, {cfg['Lmax']}")
    _int_at_least(cfg, "walkers", 2 * len(sample))
    _int_at_least(cfg, "steps", 2)
    _int_at_least(cfg, "burn", 0)
    if cfg["burn"] >= cfg["steps"]:
        raise ConfigError(f"params.burn: must be below params.steps ({cfg['steps']}), got {cfg['burn']}")
    if cfg["camb"]["lmax"] < cfg["Lmax"]:
        raise ConfigError(f"params.camb.lmax: must reach params.Lmax ({cfg['Lmax']:g}), got {cfg['camb']['lmax']}")
    if cfg["camb"]["lens_potential_accuracy"] < 0:
        raise ConfigError("params.camb.lens_potential_accuracy: must be >= 0")
    return cfg

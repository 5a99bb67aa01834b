"""The ``params:`` section of an evaluate config: schema, defaults and validation."""

from __future__ import annotations

from ..config import REQUIRED, Free, Int, ListOf, Number, OneOf, Str, resolve
from ..cosmology import PARAM_BOUNDS, PARAM_NAMES
from ..errors import ConfigError
from .emulator import MIN_POINTS

DEFAULT_PRIORS = {"Alens": [0.3, 2.0], "As": [1.5e-9, 2.7e-9]}
"""Flat prior ranges used for a sampled parameter the config gives no prior for."""

SCHEMA = {
    "calibration_cosmologies": ListOf(Int(min=0), [0], min_len=1,
                                      doc="cosmologies (indices) calibrating transfer and noise; first: the reference"),
    "test_cosmologies": ListOf(Int(min=0), None, min_len=1,
                               doc="cosmologies fitted (indices; null: every one not calibrating)"),
    "noise_index": Int(0, min=0, doc="noise level of the maps used (index)"),
    "methods": ListOf(Str(), None, min_len=1, doc="method labels of the report fitted (null: all)"),
    "sample": ListOf(OneOf(REQUIRED, *PARAM_NAMES), ["Alens", "As"], min_len=1, doc="sampled parameters"),
    "priors": Free({}, doc="parameter -> [low, high] flat prior, merged over DEFAULT_PRIORS"),
    "emulator_points": Int(9, doc=f"CAMB evaluations along each sampled CAMB parameter (at least {MIN_POINTS})"),
    "Lmin": Number(100.0, min=0, doc="lowest multipole of the bands used"),
    "Lmax": Number(1500.0, doc="highest multipole of the bands used"),
    "walkers": Int(32, min=2, doc="emcee walkers (at least twice the number of sampled parameters)"),
    "steps": Int(2000, min=2, doc="emcee steps per walker"),
    "burn": Int(500, min=0, doc="initial steps discarded (fewer than steps)"),
    "seed": Int(1, min=0, doc="root seed of the chains"),
    "camb": {"lmax": Int(5000, doc="CAMB multipole limit of the emulator (at least Lmax)"),
             "lens_potential_accuracy": Int(1, min=0, doc="CAMB lens_potential_accuracy of the emulator")},
}
"""Schema of the ``params:`` section with its defaults (see ``evaluate/quick.yaml``).

calibration_cosmologies
    Rows of the report's ``/cosmology/params`` whose maps calibrate each method's transfer and noise.
    The first is the reference: its maps also give the band-power covariance, and the emulator's
    parameters not sampled are its values. One cosmology: constant transfer and noise; several: linear
    in the sampled parameters, which must all vary among them (at least ``1 + len(sample)``
    cosmologies). The older ``calibration_cosmology: c`` is still accepted and means ``[c]``.
test_cosmologies
    None of them a calibration cosmology; null: every cosmology not used for calibration with maps at
    ``noise_index``.
sample
    ``Alens`` and/or CAMB parameters of :data:`deepcmb.cosmology.PARAM_NAMES`.
priors
    Every sampled parameter needs one (:data:`DEFAULT_PRIORS` has those of ``Alens`` and ``As``). The
    CAMB grid of the emulator spans the same ranges.
emulator_points
    ``emulator_points ** d`` CAMB evaluations in all for ``d`` sampled CAMB parameters.
Lmin, Lmax
    Bands lying entirely inside ``[Lmin, Lmax]`` are used.
camb.lmax, camb.lens_potential_accuracy
    Use those of the simulations (their cached spectra are then reused).
"""

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


def resolve_config(user: dict | None) -> dict:
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
    for key, what in (("calibration_cosmologies", "index"), ("test_cosmologies", "index"), ("sample", "parameter")):
        if cfg[key] is not None and len(set(cfg[key])) != len(cfg[key]):
            raise ConfigError(f"params.{key}: repeated {what} in {cfg[key]}")
    shared = sorted(set(cfg["test_cosmologies"] or ()) & set(cfg["calibration_cosmologies"]))
    if shared:
        raise ConfigError(f"params.test_cosmologies: {shared} also calibrate (params.calibration_cosmologies); "
                          "test on separate simulations")
    sample = cfg["sample"]
    cfg["priors"] = _check_priors(cfg)
    if any(p != "Alens" for p in sample) and cfg["emulator_points"] < MIN_POINTS:
        raise ConfigError(f"params.emulator_points: must be at least {MIN_POINTS} when a CAMB parameter is sampled, "
                          f"got {cfg['emulator_points']}")
    if not cfg["Lmin"] < cfg["Lmax"]:
        raise ConfigError(f"params.Lmin, params.Lmax: need Lmin < Lmax, got {cfg['Lmin']}, {cfg['Lmax']}")
    if cfg["walkers"] < 2 * len(sample):
        raise ConfigError(f"params.walkers: must be at least {2 * len(sample)} (twice the sampled parameters), "
                          f"got {cfg['walkers']}")
    if cfg["burn"] >= cfg["steps"]:
        raise ConfigError(f"params.burn: must be below params.steps ({cfg['steps']}), got {cfg['burn']}")
    if cfg["camb"]["lmax"] < cfg["Lmax"]:
        raise ConfigError(f"params.camb.lmax: must reach params.Lmax ({cfg['Lmax']:g}), got {cfg['camb']['lmax']}")
    return cfg

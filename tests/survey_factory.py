"""Masked test maps shared by the masked-QE and masked-MAP tests: a survey (non-periodic patches, a 10' edge
taper, point-source holes, a noise map of 0.7-1.4 times the level) and a small simulation file of it."""

from pathlib import Path

import yaml

from deepcmb.cli import main

SURVEY = {"periodic": False, "mask": {"edge_arcmin": 10.0, "holes_per_deg2": 3.0},
          "noise": {"depth_factor": [0.7, 1.4]}}


def write_masked_sims(directory: Path, shape: int, n_maps: int, seed: int = 5, survey: bool = True) -> Path:
    """``deepcmb simulate`` of ``n_maps`` maps of ``shape`` x ``shape`` pixels of 2.34375' with the survey
    :data:`SURVEY` (or, with ``survey=False``, periodic maps without a mask) at 1 uK-arcmin (Q, U, kappa)
    from the root seed ``seed``; returns the file."""
    cfg = {"seed": seed, "n_maps": n_maps, "geometry": {"shape": [shape, shape], "pixel_arcmin": 2.34375},
           "instrument": {"noise_p_uk_arcmin": [1.0]}, "simulation": {"fields": ["Q", "U", "kappa"]}}
    if survey:
        cfg["survey"] = dict(SURVEY, pad=2.0)
    (directory / f"cfg{seed}.yaml").write_text(yaml.safe_dump(cfg))
    out = directory / f"sims{seed}.h5"
    assert main(["simulate", "--config", str(directory / f"cfg{seed}.yaml"), "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    return out


def without_window(calibration: Path, out: Path) -> Path:
    """A copy of a calibration made on masked maps, rewritten as one made on maps without a mask would be: no
    ``/window``, the per-mode posterior per ring (values of no consequence: it is refused before use)."""
    import h5py
    import numpy as np

    out.write_bytes(calibration.read_bytes())
    with h5py.File(out, "r+") as c:
        del c["window"]
        shape = (len(c["modes/noise_p"]), len(c["modes/edges"]) - 1)
        for name in ("transfer", "residual"):
            del c[f"modes/{name}"]
            c[f"modes/{name}"] = np.ones(shape)
    return out

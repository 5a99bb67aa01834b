"""Survey simulations: masks, noise maps and non-periodic patches (deepcmb.survey), in the simulator and in the
simulation file."""

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.cli import main
from deepcmb.errors import ConfigError, InputError
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum
from deepcmb.io.maps import open_maps
from deepcmb.io.observations import open_observations, write_observations
from deepcmb.qe.apodization import cosine_window
from deepcmb.sample import FIELDS, FlatSimulator, Instrument, convolve_beam, sample_rng
from deepcmb.survey import Survey, edge_window, hole_centres

GEOM = FlatSkyGeometry((64, 64), 2.34375)
INSTRUMENT = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
MASK = {"edge_arcmin": 15.0, "holes_per_deg2": 2.0, "hole_radius_arcmin": 4.0, "hole_apodization_arcmin": 3.0}
NOISE = {"depth_factor": [0.7, 1.5], "correlation_arcmin": 30.0, "stripe_amplitude": 0.5, "stripe_width_arcmin": 10.0,
         "stripe_angle_deg": 30.0}
SURVEY = {"periodic": False, "pad": 2.0, "mask": MASK, "noise": NOISE}
SMALL = {"seed": 5, "n_maps": 24, "geometry": {"shape": [32, 32], "pixel_arcmin": 2.34375},
         "cosmology": {"sampling": "grid", "grid": {"Alens": [1.0, 0.5]}},
         "instrument": {"noise_p_uk_arcmin": [1.0, 3.0]},
         "simulation": {"fields": ["T", "Q", "U", "Q_lensed", "kappa"], "block_size": 8}}


def _simulate(tmp_path, cfg, name, *extra):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"{name}.h5"
    assert main(["simulate", "--config", str(path), "--out", str(out), "--quiet", "--workers", "1", *extra]) == 0
    return out


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, d: out.update({name: d[...]}) if isinstance(d, h5py.Dataset) else None)
    return out


def _assert_same_datasets(a, b):
    a, b = _datasets(a), _datasets(b)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


def _samples(geom, spectra, survey, n, fields, instrument=INSTRUMENT, seed=7):
    sim = FlatSimulator(geom, spectra, instrument, survey=survey)
    maps = [sim.sample(seed, i, fields) for i in range(n)]
    return {k: np.stack([m[k] for m in maps]) for k in fields}


# -- defaults: nothing changes ------------------------------------------------------------------------

def test_without_survey_the_maps_are_those_of_before(tmp_path, fiducial):
    """No survey section, an empty one and one spelling out the defaults: the same datasets, no mask, periodic;
    the noise is still white noise of the level's depth drawn T, Q, U from the 'noise' stream."""
    plain = _simulate(tmp_path, SMALL, "plain")
    _assert_same_datasets(plain, _simulate(tmp_path, dict(SMALL, survey={}), "empty"))
    defaults = {"periodic": True, "pad": 2.0,
                "mask": {"edge_arcmin": 0.0, "holes_per_deg2": 0.0, "hole_radius_arcmin": 4.0,
                         "hole_apodization_arcmin": 2.0},
                "noise": {"depth_factor": [1.0, 1.0], "stripe_amplitude": 0.0}}
    _assert_same_datasets(plain, _simulate(tmp_path, dict(SMALL, survey=defaults), "defaults"))
    with open_maps(plain) as f:
        assert f.periodic and f.weights == [] and not f.masked and "mask" not in f.file
    # the simulator: no survey and the default survey give the same arrays, and the noise is white
    names = list(FIELDS)
    a = FlatSimulator(GEOM, fiducial, INSTRUMENT).sample(3, 9, names)
    b = FlatSimulator(GEOM, fiducial, INSTRUMENT, survey=Survey.from_config({})).sample(3, 9, names)
    for k in names:
        assert a[k].tobytes() == b[k].tobytes(), k
    rng = sample_rng(3, 9, "noise")
    noise = [rng.standard_normal(GEOM.shape) * d / GEOM.pixel_arcmin for d in (1 / np.sqrt(2), 1.0, 1.0)]
    beamed = convolve_beam(GEOM, np.stack([a["T_lensed"], a["Q_lensed"], a["U_lensed"]]), INSTRUMENT)
    for k, name in enumerate("TQU"):
        np.testing.assert_allclose(a[name] - beamed[k], noise[k], atol=1e-12)


# -- the mask --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("periodic", [False, True])
def test_mask_edges_and_holes(periodic):
    """[0, 1]; exactly 1 beyond the holes' reach and the edge taper, 0 inside a hole; the holes a Poisson
    process of the configured density (their number per map and the area they blank); a smooth edge."""
    edge = 0.0 if periodic else MASK["edge_arcmin"]
    survey = Survey.from_config({"periodic": periodic, "mask": dict(MASK, edge_arcmin=edge)})
    on = survey.on(GEOM, periodic)
    radius, reach = MASK["hole_radius_arcmin"], MASK["hole_radius_arcmin"] + MASK["hole_apodization_arcmin"]
    pix, side = GEOM.pixel_arcmin, GEOM.shape[0] * GEOM.pixel_arcmin
    y, x = np.meshgrid(np.arange(64) * pix, np.arange(64) * pix, indexing="ij")
    border = np.minimum(np.minimum(y, side - pix - y), np.minimum(x, side - pix - x)) + 0.5 * pix  # pixel centres
    inner = border >= edge
    n_maps, counts, blank = 400, [], []
    for i in range(n_maps):
        m = on.mask(sample_rng(1, i, "mask"))
        centres = hole_centres(GEOM, MASK["holes_per_deg2"], reach, periodic, sample_rng(1, i, "mask"))
        d = np.full(GEOM.shape, np.inf)
        for yc, xc in centres:
            dy, dx = y - yc, x - xc
            if periodic:
                dy, dx = (dy + side / 2) % side - side / 2, (dx + side / 2) % side - side / 2
            d = np.minimum(d, np.hypot(dy, dx))
        assert m.min() >= 0 and m.max() <= 1
        assert np.all(m[(d >= reach) & inner] == 1) and np.array_equal(m == 0, d <= radius)
        np.testing.assert_array_equal(m[d >= reach], edge_window(GEOM, edge)[d >= reach])
        counts.append(len(centres))
        blank.append(np.mean(d <= radius))
    # number of holes: Poisson of mean density x the area where they fall (the map, grown by their reach)
    grow = 0.0 if periodic else 2 * reach
    expected = MASK["holes_per_deg2"] * (side + grow) ** 2 / 3600.0
    assert abs(np.mean(counts) - expected) < 4 * np.sqrt(expected / n_maps)
    assert abs(np.var(counts) / expected - 1) < 4 * np.sqrt((2 + 1 / expected) / n_maps)
    # blanked area: a pixel lies in a hole with probability 1 - exp(-density pi R^2), at the border too
    p = 1 - np.exp(-MASK["holes_per_deg2"] * np.pi * (radius / 60.0) ** 2)
    assert abs(np.mean(blank) - p) < 4 * np.std(blank) / np.sqrt(n_maps)
    if edge:
        # the edge is the QE's cosine window: 0.015 on the border pixel, steps below pi/2 pixel/width
        window = edge_window(GEOM, edge)
        np.testing.assert_allclose(window, cosine_window(GEOM, edge), atol=1e-15)
        assert window[0, 32] < 0.02 and window[32, 32] == 1
        assert np.abs(np.diff(window, axis=1)).max() <= np.pi / 2 * pix / edge


# -- the noise map ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("periodic, beam, seed", [(True, 1.0, 7), (False, 0.0, 8)])
def test_noise_follows_ivar_p(fiducial, periodic, beam, seed):
    """(Q - B Q_lensed) sqrt(ivar_p) is unit white noise in every range of depth, T's scaled by Delta_T/Delta_P;
    the local depth spans the configured range, about uniformly."""
    survey = Survey.from_config(dict(SURVEY, periodic=periodic))
    inst = Instrument(beam, 2.0, 1.5)
    maps = _samples(GEOM, fiducial, survey, 60, ["T", "Q", "U", "T_lensed", "Q_lensed", "U_lensed", "ivar_p"],
                    instrument=inst, seed=seed)
    ivar = maps["ivar_p"]
    depth = GEOM.pixel_arcmin / np.sqrt(ivar) / inst.noise_p_uk_arcmin
    assert 0.7 <= depth.min() < 0.72 and 1.48 < depth.max() <= 1.5 and abs(np.mean(depth < 1.1) - 0.5) < 0.1
    tertile = np.digitize(ivar, np.quantile(ivar, [1 / 3, 2 / 3]))
    for name, scale in (("T", inst.noise_t_uk_arcmin / inst.noise_p_uk_arcmin), ("Q", 1.0), ("U", 1.0)):
        lensed = maps[f"{name}_lensed"]
        beamed = np.stack([convolve_beam(GEOM, m, inst) for m in lensed]) if periodic else lensed
        r = (maps[name] - beamed) * np.sqrt(ivar) / scale
        for k in range(3):
            sel = r[tertile == k]
            assert abs(np.var(sel) - 1) < 4 * np.sqrt(2.0 / sel.size), (name, k, np.var(sel))


# -- non-periodic patches --------------------------------------------------------------------------------

def test_non_periodic_patches_are_cut_from_larger_boxes(fiducial):
    """A cut patch's opposite edges do not match (a periodic one's do), and its kappa holds modes below the
    patch's fundamental: the variance of the patch mean of kappa is what the box's spectrum predicts."""
    cut = Survey.from_config({"periodic": False, "pad": 2.0})
    jumps = {}
    for periodic, survey in ((True, None), (False, cut)):
        q = _samples(GEOM, fiducial, survey, 40, ["Q_lensed"])["Q_lensed"]
        neighbours = np.mean(np.diff(q, axis=2) ** 2)
        jumps[periodic] = np.mean((q[:, :, 0] - q[:, :, -1]) ** 2) / neighbours
    assert 0.5 < jumps[True] < 2 and jumps[False] > 4, jumps
    n = 1000
    kappa = _samples(GEOM, fiducial, cut, n, ["kappa"])["kappa"]
    assert np.abs(_samples(GEOM, fiducial, None, 20, ["kappa"])["kappa"].mean(axis=(1, 2))).max() < 1e-15
    # prediction: var(mean) = sum over the box's modes of C_kk(l) |w_l|^2 / A_box, w_l the patch's mean of e^{il.x}
    box = cut.box(GEOM)
    ell = box.ell(real=False)
    clkk = interp_spectrum(fiducial.clpp, ell) * ell**4 / 4 * (ell > 0) * (ell < box.ell_nyquist)
    w2 = [np.sinc(np.fft.fftfreq(N) * n_pix) ** 2 / np.sinc(np.fft.fftfreq(N)) ** 2
          for N, n_pix in zip(box.shape, GEOM.shape)]
    predicted = np.sum(clkk * w2[0][:, None] * w2[1][None, :]) / box.area
    measured = np.var(kappa.mean(axis=(1, 2)))
    assert abs(measured / predicted - 1) < 4 * np.sqrt(2.0 / n), (measured, predicted)


# -- the stage and the file ------------------------------------------------------------------------------

def test_stage_writes_mask_and_ivar_p_the_same_with_any_workers_and_shards(tmp_path):
    cfg = dict(SMALL, survey=dict(SURVEY, mask=dict(MASK, edge_arcmin=10.0)))
    one = _simulate(tmp_path, cfg, "one")
    with open_maps(one) as f:
        assert not f.periodic and f.weights == ["mask", "ivar_p"] and f.masked and f.fields == sorted(SMALL[
            "simulation"]["fields"])
        rows = np.array([5, 2, 5])
        for name in ("mask", "ivar_p"):
            d = f.file[name]
            assert d.shape == (24, 32, 32) and d.dtype == np.float32 and d.chunks == (1, 32, 32)
            assert (d.attrs["min"], d.attrs["max"]) == (d[...].min(), d[...].max())
            np.testing.assert_array_equal(f.read(name, rows), d[...][rows])
        mask, ivar = f.read("mask", np.arange(24)), f.read("ivar_p", np.arange(24))
        # each level's noise map follows its own depth, 0.7-1.5 x noise_p
        depth = 2.34375 / np.sqrt(ivar) / np.array([1.0, 3.0])[f.noise_index][:, None, None]
        assert 0.7 <= depth.min() and depth.max() <= 1.5
        q = f.read("Q", np.arange(24))
    with pytest.raises(InputError, match="need a network that reads the mask"):
        open_maps(one, method="nn")
    with open_maps(one, method="qe") as f:  # the quadratic estimator takes masked maps
        assert f.masked
    # the observation file reads the same mask and ivar_p the same way
    obs = write_observations(tmp_path / "obs.h5", q, q, pixel_arcmin=2.34375, beam_fwhm_arcmin=1.0,
                             noise_p_uk_arcmin=1.0, periodic=False, mask=mask, ivar_p=ivar)
    with open_observations(obs) as o:
        assert o.weights == ["mask", "ivar_p"] and o.masked
    two = tmp_path / "two.h5"
    assert main(["simulate", "--config", str(tmp_path / "one.yaml"), "--out", str(two), "--quiet", "--workers",
                 "2"]) == 0
    _assert_same_datasets(one, two)
    sharded = tmp_path / "sharded.h5"
    for extra in (["--shard", "2/2"], []):
        assert main(["simulate", "--config", str(tmp_path / "one.yaml"), "--out", str(sharded), "--quiet",
                     "--workers", "1", *extra]) == 0
    _assert_same_datasets(one, sharded)


def test_curved_patches_get_a_mask_and_a_noise_map(tmp_path):
    cfg = {"seed": 3, "n_maps": 48, "geometry": {"kind": "curved", "shape": [16, 16], "pixel_arcmin": 6.0},
           "curved": {"lmax": 600, "patch_nside": 2}, "instrument": {"beam_fwhm_arcmin": 0.0},
           "simulation": {"fields": ["Q", "Q_lensed", "kappa"]},
           "survey": {"mask": {"edge_arcmin": 20.0, "holes_per_deg2": 0.5}, "noise": NOISE}}
    out = _simulate(tmp_path, cfg, "curved")
    with open_maps(out) as f:
        assert not f.periodic and f.weights == ["mask", "ivar_p"] and f.masked
        rows = np.arange(48)
        mask, ivar = f.read("mask", rows), f.read("ivar_p", rows)
        r = (f.read("Q", rows) - f.read("Q_lensed", rows)) * np.sqrt(ivar)
    assert mask.min() < 0.1 and mask.max() == 1 and not np.array_equal(mask[0], mask[1])
    assert abs(np.var(r) - 1) < 4 * np.sqrt(2.0 / r.size)


@pytest.mark.parametrize("survey, key", [
    ({"mask": {"edge_arcmin": 40.0}}, "survey.mask.edge_arcmin"),
    ({"mask": {"hole_radius_arcmin": 0}}, "survey.mask.hole_radius_arcmin"),
    ({"mask": {"holes": 2}}, "survey.mask.holes"),
    ({"noise": {"depth_factor": [1.5, 0.7]}}, "survey.noise.depth_factor"),
    ({"noise": {"depth_factor": [0.8, 0.8]}}, "survey.noise.depth_factor"),
    ({"noise": {"stripe_amplitude": 0.5}}, "survey.noise.stripe_amplitude"),
    ({"pad": 1.0}, "survey.pad"),
])
def test_bad_survey_settings_are_one_line_errors_naming_the_key(tmp_path, capsys, survey, key):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dict(SMALL, survey=survey)))
    assert main(["simulate", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err


def test_a_noise_map_needs_a_noise_level(tmp_path, capsys):
    cfg = dict(SMALL, instrument={"noise_p_uk_arcmin": [0.0, 1.0]}, survey={"noise": NOISE})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["simulate", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o.h5"), "--quiet"]) == 2
    assert "survey.noise.depth_factor" in capsys.readouterr().err


def test_fresh_training_maps_carry_the_files_mask(tmp_path):
    """Fresh training maps follow the file's survey: with the file's seed a periodic file's masked maps and
    masks are remade (a network that takes the mask learns on masks it has never seen; one that does not is
    trained on the data as they are)."""
    pytest.importorskip("keras")
    from deepcmb.nn.onthefly import FreshBatches

    sims = _simulate(tmp_path, dict(SMALL, n_maps=8, survey={"mask": {"holes_per_deg2": 20.0}}), "masked")
    with open_maps(sims) as f:
        assert f.periodic and f.weights == ["mask"] and f.masked
        mask, q = f.read("mask", np.arange(4)), f.read("Q", np.arange(4))
    fresh = FreshBatches(sims, ["Q", "U", "mask"], ["kappa"], batch_size=4, steps_per_epoch=1)
    fresh.root_seed = SMALL["seed"]
    _, maps = fresh.load(0)
    np.testing.assert_allclose(maps["mask"], mask, atol=1e-6)
    np.testing.assert_allclose(maps["Q"], q, atol=1e-6 * np.abs(q).max())
    assert mask.min() == 0

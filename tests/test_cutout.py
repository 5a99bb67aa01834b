"""``deepcmb cutout``: gnomonic patches cut from HEALPix maps into an observation file.

The skies are band-limited (lmax = 2 nside = 512 at nside 256), so the least-squares harmonic analysis
recovers their coefficients to its tolerance and the patches can be compared with the exact values at
the pixel centres. Pure-B modes use the estimator of ``tests/test_curvedsky.py``.
"""

import h5py
import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from deepcmb import curvedsky
from deepcmb.cli import main
from deepcmb.cutout import cutout, hits_to_ivar, mask_fractions, read_healpix
from deepcmb.errors import InputError
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.io.observations import open_observations
from deepcmb.io.reconstruction import open_reconstruction
from deepcmb.sample import Instrument, sample_rng
from test_curvedsky import apodisation, eb_modes

NSIDE, LMAX = 256, 512
GEOM = FlatSkyGeometry((64, 64), 4.0)
"""4.3 degree patches; the skies' band limit 512 is far below the grid's Nyquist multipole 2700."""
CENTRES = [(30.0, 20.0), (200.0, -35.0), (300.0, 80.0), (100.0, 45.0)]
SEED = 7


def _toy_cl(lmax):
    ell = np.arange(lmax + 1.0)
    return np.where(ell >= 2, 1e4 / (ell + 20.0) ** 2, 0.0)


@pytest.fixture(scope="module")
def sky():
    """T and E coefficients (no B) of a power-law toy sky and its HEALPix maps (T, Q, U), COSMO."""
    rng = np.random.default_rng(SEED)
    cl = _toy_cl(LMAX)
    tlm, elm = (curvedsky.gaussian_alm(cl, curvedsky.white_alm(LMAX, rng)) for _ in range(2))
    maps = hp.alm2map([tlm, elm, np.zeros_like(elm)], NSIDE, lmax=LMAX, pol=True)
    return {"tlm": tlm, "elm": elm, "maps": maps}


@pytest.fixture(scope="module")
def files(sky, tmp_path_factory):
    """The sky as FITS files: COSMO (no POLCCONV), IAU (U negated, POLCCONV = IAU), Q/U only, a mask (1 north
    of the equator), uniform hits, and the inverse variance those hits stand for."""
    d = tmp_path_factory.mktemp("cutout")
    t, q, u = sky["maps"]
    paths = {name: d / f"{name}.fits" for name in ("cosmo", "iau", "qu", "mask", "hits", "ivar")}
    hp.write_map(paths["cosmo"], [t, q, u])
    hp.write_map(paths["iau"], [t, q, -u], extra_header=[("POLCCONV", "IAU")])
    hp.write_map(paths["qu"], [q, u])
    _, lat = hp.pix2ang(64, np.arange(hp.nside2npix(64)), lonlat=True)
    hp.write_map(paths["mask"], (lat > 0).astype(float))
    hp.write_map(paths["hits"], np.full(hp.nside2npix(128), 4.0))
    hp.write_map(paths["ivar"], hits_to_ivar(np.full(hp.nside2npix(128), 4.0), 10.0))
    return paths


def _cli(*args):
    """``deepcmb cutout ARGS`` on patches of :data:`GEOM`."""
    return main(["cutout", *map(str, args), "--shape", "64,64", "--pixel-arcmin", str(GEOM.pixel_arcmin), "--quiet"])


def _centres_option():
    return "centres=" + str([list(c) for c in CENTRES])


# -- polarization -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lat", [0.0, 80.0])
def test_pure_e_sky_gives_pure_e_patches_only_with_the_rotation(sky, lat):
    """The cutout of a pure-E sky has pure-B power < 1e-4 of its E power at 200 < l < 500 (1e-6 and 2e-6
    measured at the equator and at 80 deg); the same patch left in the HEALPix basis leaks > 1 % into B
    at latitude 80 (4e-2 measured), where that basis turns by 0.5 rad across the patch (at the equator it
    differs from the patch frame by a quarter turn, a sign of Q and U only)."""
    maps = np.stack([sky["maps"][1], sky["maps"][2]])
    patch = cutout(maps, GEOM, [(123.0, lat)], lmax=LMAX)
    q, u = patch.maps["Q"][0], patch.maps["U"][0]
    win = apodisation(GEOM)
    band = (GEOM.ell() > 200) & (GEOM.ell() < 500)

    def leak(q, u):
        e, b, _ = eb_modes(GEOM, q, u, win)
        return np.sum(np.abs(b[band]) ** 2) / np.sum(np.abs(e[band]) ** 2)

    assert leak(q, u) < 1e-4
    psi = curvedsky.polarization_angle(GEOM, 123.0, lat)
    unrotated = curvedsky.rotate_polarization(q, u, -psi)
    if lat > 45.0:
        assert leak(*unrotated) > 1e-2


def test_patches_are_the_sky_at_the_pixel_centres_of_the_curved_simulations(fiducial):
    """A HEALPix map made from the coefficients of deepcmb's curved-sky simulation, cut out, equals the
    simulation's own patches (same centres, pixels and Q/U frame) to 1e-6 of their rms."""
    inst = Instrument(beam_fwhm_arcmin=0.0, noise_p_uk_arcmin=0.0)
    names = ["T_unlensed", "Q_unlensed", "U_unlensed"]
    sim = curvedsky.simulate_curved_patches(fiducial, inst, SEED, 0, GEOM, CENTRES, LMAX, fields=names)
    rng = sample_rng(SEED, 0, "cmb")  # the coefficients the simulation drew
    white_t, white_e = curvedsky.white_alm(LMAX, rng), curvedsky.white_alm(LMAX, rng)
    tlm, elm = curvedsky.correlated_te_alm(fiducial.unlensed_cl("TT"), fiducial.unlensed_cl("EE"),
                                           fiducial.unlensed_cl("TE"), white_t, white_e)
    maps = hp.alm2map([tlm, elm, np.zeros_like(elm)], NSIDE, lmax=LMAX, pol=True)
    patches = cutout(maps, GEOM, CENTRES, lmax=LMAX)
    assert patches.residual["spin0"] < 1e-6 and patches.residual["spin2"] < 1e-6
    for name in names:
        ours, theirs = patches.maps[name[0]], sim[name]
        assert np.max(np.abs(ours - theirs)) < 1e-6 * np.std(theirs), name


def test_iau_input_gives_the_same_patches_as_cosmo_input(files, tmp_path, capsys):
    """The IAU file (U negated, POLCCONV = IAU in its header) gives the patches of the COSMO file; a
    convention given against the header is refused in one line."""
    common = ["--beam-fwhm-arcmin", 0, "--noise-p-uk-arcmin", 1, "--lmax", LMAX, "--set", _centres_option()]
    assert _cli("--maps", files["cosmo"], "--out", tmp_path / "cosmo.h5", *common) == 0
    assert _cli("--maps", files["iau"], "--out", tmp_path / "iau.h5", *common) == 0
    with open_observations(tmp_path / "cosmo.h5") as a, open_observations(tmp_path / "iau.h5") as b:
        assert a.pol_convention == b.pol_convention == "COSMO"
        rows = np.arange(len(CENTRES))
        for name in ("T", "Q", "U"):
            np.testing.assert_array_equal(a.read(name, rows), b.read(name, rows))
    with h5py.File(tmp_path / "iau.h5") as f:
        assert f.attrs["input_pol_convention"] == "IAU"
    capsys.readouterr()
    code = _cli("--maps", files["iau"], "--out", tmp_path / "x.h5", "--pol-convention", "COSMO", *common)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("deepcmb cutout: error: pol_convention: COSMO given but the maps' header has "
                                 "POLCCONV = IAU")


def test_nested_files_are_read_in_ring_order(sky, tmp_path):
    path = tmp_path / "nested.fits"
    hp.write_map(path, [hp.reorder(m, r2n=True) for m in sky["maps"][1:]], nest=True)
    maps, header = read_healpix(path, None)
    assert header["ORDERING"].strip() == "NESTED"
    np.testing.assert_array_equal(maps, sky["maps"][1:])


def test_partial_sky_files_are_read_as_full_maps_with_unseen_pixels(tmp_path):
    """A file with explicit pixel indices (PIXEL, Q, U) holds two maps, UNSEEN where it has no pixels."""
    pix = np.arange(100)
    cols = [fits.Column(name="PIXEL", format="J", array=pix),
            *(fits.Column(name=n, format="D", array=np.full(100, v)) for n, v in (("Q", 1.0), ("U", 2.0)))]
    table = fits.BinTableHDU.from_columns(cols)
    table.header.update({"PIXTYPE": "HEALPIX", "ORDERING": "RING", "NSIDE": 16, "INDXSCHM": "EXPLICIT"})
    table.writeto(tmp_path / "partial.fits")
    maps, _ = read_healpix(tmp_path / "partial.fits", None)
    assert maps.shape == (2, hp.nside2npix(16))
    np.testing.assert_array_equal(maps[:, :100], [[1.0] * 100, [2.0] * 100])
    assert np.all(maps[:, 100:] == hp.UNSEEN)


# -- mask and noise -----------------------------------------------------------------------------------
def test_patches_outside_the_mask_are_dropped_and_hits_give_ivar_in_inverse_uk2(files, tmp_path):
    """With a mask that is 1 north of the equator, ``min_mask_fraction: 0.5`` keeps the three northern
    patches; uniform hits h = 4 at 10 uK-arcmin per hit are a depth of 5 uK-arcmin, i.e.
    ivar_p = 4 * 4'^2 / (10 uK')^2 = 0.64 / uK^2 in every pixel, the noise level written is 5, and the
    --ivar map of the same depth gives the same file."""
    out = tmp_path / "masked.h5"
    common = ["--maps", files["qu"], "--mask", files["mask"], "--beam-fwhm-arcmin", 1.5, "--lmax", LMAX,
              "--min-mask-fraction", 0.5, "--set", _centres_option()]
    assert _cli(*common, "--hits", files["hits"], "--noise-uk-arcmin-per-hit", 10, "--out", out) == 0
    north = [c for c in CENTRES if c[1] > 0]
    with open_observations(out) as f:
        assert f.n_maps == len(north) and f.fields == ["Q", "U"] and not f.periodic
        assert f.instrument.noise_p_uk_arcmin == pytest.approx(5.0)
        assert f.instrument.beam_fwhm_arcmin == 1.5
        ivar = f.read("ivar_p", np.arange(f.n_maps))
        np.testing.assert_allclose(ivar, 4 * 4.0**2 / 10.0**2, rtol=1e-6)
        mask = f.read("mask", np.arange(f.n_maps))
    with h5py.File(out) as h:
        np.testing.assert_allclose(np.stack([h["patches/lon_deg"], h["patches/lat_deg"]], -1), north)
        assert h.attrs["healpix_nside"] == NSIDE and h.attrs["lmax"] == LMAX and h.attrs["stage"] == "cutout"
    full = hp.read_map(files["mask"])
    np.testing.assert_allclose(mask.mean(axis=(1, 2)), mask_fractions(full, GEOM, north))
    assert _cli(*common, "--ivar", files["ivar"], "--out", tmp_path / "ivar.h5") == 0
    with open_observations(tmp_path / "ivar.h5") as a, open_observations(out) as b:
        rows = np.arange(a.n_maps)
        np.testing.assert_allclose(a.read("ivar_p", rows), b.read("ivar_p", rows), rtol=1e-6)
        np.testing.assert_array_equal(a.read("Q", rows), b.read("Q", rows))


# -- the estimators read the file ---------------------------------------------------------------------
def test_qe_runs_on_an_unmasked_cutout_and_refuses_a_masked_one(files, tmp_path, capsys):
    """Uniform hits and no mask: ``reconstruct --method qe`` apodises the patches and writes finite kappa.
    With a mask that leaves a patch unobserved it gives a one-line error naming that map; without that
    patch it filters the masked maps."""
    plain, masked = tmp_path / "plain.h5", tmp_path / "masked.h5"
    common = ["--maps", files["qu"], "--hits", files["hits"], "--noise-uk-arcmin-per-hit", 10,
              "--beam-fwhm-arcmin", 1, "--lmax", LMAX, "--set", _centres_option()]
    assert _cli(*common, "--out", plain) == 0
    assert _cli(*common, "--mask", files["mask"], "--out", masked) == 0
    rec = tmp_path / "rec.h5"
    qe = ["reconstruct", "--method", "qe", "--apodize-arcmin", 30, "--lmax", 500, "--Lmax", 500, "--quiet"]
    assert main([*map(str, qe), "--sims", str(plain), "--out", str(rec)]) == 0
    with open_reconstruction(rec) as r:
        kappa = r["maps/kappa"][...]
        assert kappa.shape == (len(CENTRES),) + GEOM.shape and np.all(np.isfinite(kappa))
    capsys.readouterr()
    assert main([*map(str, qe), "--sims", str(masked), "--out", str(tmp_path / "rec2.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepcmb reconstruct: error:") and "map 1 has no observed pixel" in err[0]
    holes = np.ones(hp.nside2npix(NSIDE))  # every patch observed, the first with a 1-degree hole
    holes[hp.query_disc(NSIDE, hp.ang2vec(*CENTRES[0], lonlat=True), np.radians(0.5))] = 0.0
    hp.write_map(tmp_path / "holes.fits", holes, dtype=np.float64)
    partial = tmp_path / "partial.h5"
    assert _cli(*common, "--mask", tmp_path / "holes.fits", "--out", partial) == 0
    qe_masked = ["reconstruct", "--method", "qe", "--lmax", 500, "--Lmax", 500, "--mean-field-maps", 2,
                 "--response-maps", 4, "--mc-seed", 3, "--quiet"]
    assert main([*map(str, qe_masked), "--sims", str(partial), "--out", str(tmp_path / "rec3.h5")]) == 0
    with open_reconstruction(tmp_path / "rec3.h5") as r:
        assert r.attrs["filter"] == "cinv" and np.all(np.isfinite(r["maps/kappa"][...]))


# -- errors -------------------------------------------------------------------------------------------
def _not_healpix(path):
    cols = [fits.Column(name=n, format="D", array=np.zeros(1000)) for n in ("Q", "U")]
    fits.BinTableHDU.from_columns(cols).writeto(path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--maps", "{d}/missing.fits"], "{d}/missing.fits: no such file"),
    (["--maps", "{bad}"], "{bad}: not a HEALPix map"),
    (["--maps", "{qu}", "--lmax", "1000"], "lmax: must be between 2 and 3 nside - 1 = 767 for maps of nside 256, "
                                             "got 1000"),
    (["--maps", "{qu}", "--patch-nside", "3"], "patch_nside: must be a power of two, got 3"),
    (["--maps", "{qu}", "--noise-p-uk-arcmin", "null"],
     "noise_p_uk_arcmin: required without --hits or --ivar (white noise of Q and U, uK-arcmin)"),
    (["--maps", "{qu}", "--hits", "{hits}"],
     "noise_uk_arcmin_per_hit: required with --hits (the Q/U depth of one hit, uK-arcmin)"),
])
def test_errors_are_one_line(files, tmp_path, capsys, args, message):
    subs = {"d": tmp_path, "bad": _not_healpix(tmp_path / "bad.fits"), "qu": files["qu"], "hits": files["hits"]}
    argv = [a.format(**subs) for a in args]
    if "--noise-p-uk-arcmin" not in argv:
        argv += ["--noise-p-uk-arcmin", "1"]
    code = _cli(*argv, "--beam-fwhm-arcmin", "1", "--out", tmp_path / "o.h5")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"deepcmb cutout: error: {message.format(**subs)}"), err[0]
    assert not (tmp_path / "o.h5").exists()


def test_beam_is_required(files, tmp_path, capsys):
    code = _cli("--maps", files["qu"], "--noise-p-uk-arcmin", 1, "--out", tmp_path / "o.h5")
    assert code == 2 and capsys.readouterr().err.strip() == (
        "deepcmb cutout: error: beam_fwhm_arcmin: required: the Gaussian beam FWHM of the input maps, arcmin (0: none)")


def test_the_python_api_refuses_arrays_that_are_not_healpix_maps(sky):
    q, u = sky["maps"][1], sky["maps"][2]
    with pytest.raises(InputError, match="must have one size"):
        cutout([q, u[:-1]], GEOM, CENTRES)
    with pytest.raises(InputError, match="mask of shape"):
        cutout([q, u], GEOM, CENTRES, mask=np.ones(1000))
    with pytest.raises(InputError, match="expected maps"):
        cutout([q], GEOM, CENTRES)


def test_patches_write_an_observation_file_from_python(sky, tmp_path):
    """The Python API's file: the patches as cut, the noise level of ``median_depth``, the centres."""
    ivar = hits_to_ivar(np.full(hp.nside2npix(128), 4.0), 10.0)
    patches = cutout(sky["maps"], GEOM, CENTRES[:2], ivar=ivar, lmax=LMAX)
    assert patches.median_depth() == pytest.approx(5.0)
    path = patches.write(tmp_path / "obs.h5", beam_fwhm_arcmin=1.0, noise_p_uk_arcmin=patches.median_depth())
    with open_observations(path) as f:
        assert f.fields == ["T", "Q", "U"] and f.noise_t_uk_arcmin == pytest.approx(5.0 / np.sqrt(2.0))
        np.testing.assert_allclose(f.read("Q", [0, 1]), patches.maps["Q"], rtol=1e-6, atol=1e-6)
    with h5py.File(path) as h:
        np.testing.assert_allclose(h["patches/lat_deg"][...], [c[1] for c in CENTRES[:2]])

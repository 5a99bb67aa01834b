"""`deepcmb figures`: every figure from a synthetic report (and chains), sizes, content, index, errors."""

import argparse
import json
import re

import h5py
import numpy as np
import pytest
from matplotlib.image import imread

from deepcmb.config import resolve
from deepcmb.errors import ConfigError, InputError, OutputExistsError
from deepcmb.figures import SCHEMA, Chains, Report, plan_figures, run_figures
from deepcmb.figures import cli as figures_cli
from deepcmb.figures.performance import plot_noise, plot_rho
from deepcmb.figures.posteriors import density_levels, plot_posteriors
from report_factory import clkk_model, make_chains, make_report, n0_model

#: Documented PNG size (width, height) of each figure (deepcmb/figures/__init__.py).
SIZE_PX = {"maps_kappa": (1200, 600), "maps_E": (1200, 600), "spectra": (700, 500), "rho": (700, 500),
           "noise": (700, 500), "transfer": (700, 500), "snr": (700, 500), "cosmology": (1200, 500),
           "E_spectra": (1200, 500), "posteriors": (700, 700)}
PER_LEVEL = ("spectra", "rho", "noise", "transfer", "snr")


def _kind(stem):
    return re.sub(r"_(noise|cosmo)\d+$", "", stem)


def _small_report(path, **kw):
    """One level, one cosmology, no E head, no examples: the five per-level figures only (fast)."""
    opts = {"methods": ("nn", "qe_eb"), "e_methods": (), "n_levels": 1, "n_cosmo": 1, "examples": 0}
    return make_report(path, **{**opts, **kw})


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    d = tmp_path_factory.mktemp("figures")
    report = make_report(d / "report.h5", methods=("nn", "qe_eb", "qe_mv_pol"), n_levels=1)
    chains = make_chains(d / "chains.h5", report, cosmologies=(1, 2))
    out = d / "figs"
    return report, out, run_figures(report, out, chains=chains, progress=False)


def test_every_figure_written_at_documented_size_and_indexed(full):
    report, out, paths = full
    index = json.loads((out / "index.json").read_text())
    expected = {"maps_kappa", "maps_E", "cosmology", "E_spectra", "posteriors_cosmo1", "posteriors_cosmo2",
                *PER_LEVEL}
    assert set(index["figures"]) == expected
    assert index["format"] == "deepcmb.figures" and index["report"] == str(report.resolve())
    assert index["stage"] == "figures" and {"git_revision", "created", "deepcmb_version"} <= set(index)
    assert sorted(paths) == sorted(out / f for e in index["figures"].values() for f in e["files"])
    assert not out.with_name("figs.tmp").exists()
    for stem, entry in index["figures"].items():
        assert entry["files"] == [f"{stem}.png", f"{stem}.pdf"] and len(entry["caption"]) > 40
        width, height = SIZE_PX[_kind(stem)]
        assert entry["size_px"] == [width, height]
        image = imread(out / f"{stem}.png")[..., :3]
        assert image.shape == (height, width, 3), stem
        ink = np.any(image < 0.9, axis=-1).mean()  # fraction of pixels that are not (near) white
        assert image.var() > 1e-3 and 0.02 < ink < 0.9, (stem, image.var(), ink)
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem


def _errorbars(ax):
    """label -> (x, y, yerr, colour) of every errorbar container of an axes."""
    found = {}
    for c in ax.containers:
        line = c.lines[0]
        seg = np.array(c.lines[2][0].get_segments())
        found[c.get_label()] = (line.get_xdata(), line.get_ydata(), (seg[:, 1, 1] - seg[:, 0, 1]) / 2,
                                line.get_color())
    return found


def test_rho_and_noise_plot_the_report_against_theory_in_method_colours(full):
    report_path, _, _ = full
    with Report(report_path) as rep, h5py.File(report_path, "r") as f:
        rho_ax, noise_ax = plot_rho(rep, 0).axes[0], plot_noise(rep, 0).axes[0]
        L = f["bins/L"][()]
        clkk = clkk_model(L)  # cosmologies Alens 0.8, 1.0, 1.2 with equal maps: mean amplitude 1
        rho_bars, noise_bars = _errorbars(rho_ax), _errorbars(noise_ax)
        colours = set()
        for label in rep.methods:
            g = f[f"methods/{label}/groups/noise0"]
            _, y, err, colour = rho_bars[label]
            np.testing.assert_allclose(y, g["rho2"][()])
            np.testing.assert_allclose(err, 2 * np.abs(g["rho"][()]) * g["rho_err"][()], rtol=1e-6)
            _, y, err, noise_colour = noise_bars[f"{label} $N^{{\\rm eff}}_L$"]
            np.testing.assert_allclose(y, g["n_eff"][()])
            assert noise_colour == colour
            colours.add(colour)
        assert len(colours) == len(rep.methods)
        theory = {line.get_label(): line for line in rho_ax.get_lines() if "theory" in line.get_label()}
        eb = next(line for name, line in theory.items() if name.startswith("QE EB"))
        np.testing.assert_allclose(eb.get_ydata(), clkk / (clkk + n0_model(L, 0)), rtol=1e-10)
        assert eb.get_linestyle() == "--" and eb.get_color() == rho_bars["qe_eb"][3]
        assert any(name.startswith("iterative") for name in theory)
        assert noise_ax.get_xscale() == "log" and noise_ax.get_yscale() == "log"
        for ax in (rho_ax, noise_ax):
            assert ax.get_xlabel() == "multipole $L$" and ax.get_legend() is not None
        assert "[sr]" in noise_ax.get_ylabel() and r"\rho_L^2" in rho_ax.get_ylabel()


def test_one_figure_per_noise_level_and_optional_content_skipped(tmp_path):
    path = _small_report(tmp_path / "report.h5", n_levels=2, iterative=False)
    with Report(path) as rep, h5py.File(path, "r") as f:
        stems = [job.stem for job in plan_figures(rep)]
        assert stems == [f"{s}_noise{j}" for j in (0, 1) for s in PER_LEVEL]  # no maps, E, cosmology, chains
        ax = plot_rho(rep, 1).axes[0]
        np.testing.assert_allclose(_errorbars(ax)["nn"][1], f["methods/nn/groups/noise1/rho2"][()])
        assert "2" in ax.get_title() and not any("iterative" in line.get_label() for line in ax.get_lines())
    full = make_report(tmp_path / "full.h5", n_levels=1)
    with Report(full) as rep:
        stems = [job.stem for job in plan_figures(rep)]
    assert stems == ["maps_kappa", "maps_E", *PER_LEVEL, "cosmology", "E_spectra"]


def test_missing_dataset_named_and_nothing_written(tmp_path):
    path = _small_report(tmp_path / "report.h5")
    with h5py.File(path, "a") as f:
        del f["methods/qe_eb/groups/noise0/rho2"]
    out = tmp_path / "figs"
    with pytest.raises(InputError, match=r"report\.h5: missing dataset /methods/qe_eb/groups/noise0/rho2"):
        run_figures(path, out, formats=["png"], progress=False)
    assert not out.exists() and not (tmp_path / "figs.tmp").exists()  # no partial folder


def test_wrong_inputs_refused(tmp_path):
    report = _small_report(tmp_path / "report.h5")
    chains = make_chains(tmp_path / "chains.h5", report, cosmologies=(0,))
    with pytest.raises(InputError, match="not a deepcmb evaluation report"):
        run_figures(chains, tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="no such file"):
        run_figures(tmp_path / "missing.h5", tmp_path / "b", progress=False)
    with h5py.File(chains, "a") as f:
        f["bins/edges"][...] = f["bins/edges"][()] + 7.0
    with pytest.raises(InputError, match="made from another evaluation report"):
        run_figures(report, tmp_path / "c", chains=chains, progress=False)
    with pytest.raises(ConfigError, match="formats"):
        run_figures(report, tmp_path / "d", formats=["jpeg"], progress=False)
    with pytest.raises(ConfigError, match="did you mean 'figures.formats'"):  # the figures: config section
        resolve({"format": ["png"]}, SCHEMA, "figures.")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not deepcmb figures"):
        run_figures(report, other, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_cli_refuses_existing_figures_then_overwrites(tmp_path, capsys):
    report = _small_report(tmp_path / "report.h5")
    parser = argparse.ArgumentParser(prog="deepcmb")
    figures_cli.add_parser(parser.add_subparsers(dest="stage"))
    out = tmp_path / "figs"
    argv = ["figures", "--report", str(report), "--out", str(out), "--formats", "png", "--quiet"]
    args = parser.parse_args(argv)
    args.func(args)
    assert "wrote 5 files" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.json"] + [f"{s}.png" for s in PER_LEVEL])
    with pytest.raises(OutputExistsError, match="use --overwrite"):
        args.func(parser.parse_args(argv))
    (out / "stale.png").write_bytes(b"old")
    args = parser.parse_args(argv + ["--overwrite"])
    args.func(args)
    assert not (out / "stale.png").exists() and (out / "rho.png").exists()


def test_contour_levels_enclose_gaussian_credible_regions():
    # For a 2-d Gaussian the highest-density region of mass p is bounded where the density has
    # fallen to (1 - p) of its peak: 0.32 (68 %) and 0.05 (95 %).
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 1_000_000))
    hist, _, _ = np.histogram2d(x, y, bins=60, range=[[-4.5, 4.5], [-4.5, 4.5]])
    t95, t68 = density_levels(hist, (0.68, 0.95))  # increasing thresholds
    assert abs(t68 / hist.max() - 0.32) < 0.03 and abs(t95 / hist.max() - 0.05) < 0.01


def test_posteriors_overlay_fits_with_truth_marked(full, tmp_path):
    report, _, _ = full
    chains = make_chains(tmp_path / "chains.h5", report, cosmologies=(2,))
    with Report(report) as rep, Chains(chains) as ch:
        fig = plot_posteriors(ch, 2, rep.colours)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["nn", "qe_eb", "qe_eb (N0-only debias)", "truth"]
    lower = fig.axes[2]  # row 1, column 0: As against Alens
    star = next(line for line in lower.get_lines() if line.get_marker() == "*")
    np.testing.assert_allclose([star.get_xdata()[0], star.get_ydata()[0]], [1.2, 2.1])  # Alens, 1e9 As
    assert lower.get_xlabel() == r"$A_{\rm lens}$" and lower.get_ylabel() == r"$10^9 A_s$"
    assert not fig.axes[1].get_visible()  # upper triangle hidden

"""`deepcmb figures`: every figure from a synthetic report (and chains), sizes, content, index, errors."""

import json
import re

import h5py
import numpy as np
import pytest
from matplotlib.colors import same_color
from matplotlib.image import imread

from deepcmb.config import resolve
from deepcmb.errors import ConfigError, InputError, OutputExistsError
from deepcmb.figures import SCHEMA, plan_figures, run_figures
from deepcmb.cli import build_parser
from deepcmb.figures.maps import ROLLOFF, plot_maps_E, plot_maps_kappa
from deepcmb.figures.performance import plot_noise, plot_rho
from deepcmb.figures.posteriors import density_levels, plot_posteriors
from deepcmb.figures.spectra import plot_cosmology
from deepcmb.figures.style import log_multipoles, method_colours, new_figure
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.io.chains import Chains
from deepcmb.io.report import Report
from report_factory import clkk_model, make_chains, make_report, n0_model

#: The methods of the quick run: two networks with an E head, two QEs.
FOUR = ("nn", "nn_pretrained", "qe_eb", "qe_mv_pol")

#: Documented PNG size (width, height) of each figure (deepcmb/figures/__init__.py) of the `full` report:
#: the map figures are 1200 x (430 + 175 m) for m methods drawn (3 kappa, 1 E head).
SIZE_PX = {"maps_kappa": (1200, 955), "maps_E": (1200, 605), "spectra": (700, 500), "rho": (700, 500),
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
    return report, out, run_figures(None, {"report": report, "chains": chains}, out, progress=False)


def test_every_figure_written_at_documented_size_and_indexed(full):
    report, out, folder = full
    index = json.loads((out / "index.json").read_text())
    expected = {"maps_kappa", "maps_E", "cosmology", "E_spectra", "posteriors_cosmo1", "posteriors_cosmo2",
                *PER_LEVEL}
    assert set(index["figures"]) == expected
    assert index["format"] == "deepcmb.figures" and index["report"] == str(report.resolve())
    assert index["stage"] == "figures" and {"git_revision", "created", "deepcmb_version"} <= set(index)
    assert folder == out
    assert sorted(p for p in out.iterdir() if p.name != "index.json") == sorted(
        out / f for e in index["figures"].values() for f in e["files"])
    assert not out.with_name("figs.tmp").exists()
    assert "maps low-passed to L <= Lmax of the analysis bins (Lmax = 2000" in index["figures"]["maps_kappa"]["caption"]
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
            assert ax.get_xlabel() == "multipole $L$"
            legend, = ax.figure.legends  # below the axes, clear of the data
            ax.figure.canvas.draw()
            assert legend.get_window_extent().y1 < ax.get_window_extent().y0
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
        run_figures({"formats": ["png"]}, {"report": path}, out, progress=False)
    assert not out.exists() and not (tmp_path / "figs.tmp").exists()  # no partial folder


def test_wrong_inputs_refused(tmp_path):
    report = _small_report(tmp_path / "report.h5")
    chains = make_chains(tmp_path / "chains.h5", report, cosmologies=(0,))
    with pytest.raises(InputError, match="not a deepcmb evaluation report"):
        run_figures(None, {"report": chains}, tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="no such file"):
        run_figures(None, {"report": tmp_path / "missing.h5"}, tmp_path / "b", progress=False)
    with h5py.File(chains, "a") as f:
        f["bins/edges"][...] = f["bins/edges"][()] + 7.0
    with pytest.raises(InputError, match="made from another evaluation report"):
        run_figures(None, {"report": report, "chains": chains}, tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="formats"):
        run_figures({"formats": ["jpeg"]}, {"report": report}, tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match="did you mean 'figures.formats'"):  # the figures: config section
        resolve({"format": ["png"]}, SCHEMA, "figures.")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not deepcmb figures"):
        run_figures(None, {"report": report}, other, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_cli_refuses_existing_figures_then_overwrites(tmp_path, capsys):
    report = _small_report(tmp_path / "report.h5")
    parser = build_parser("figures")
    out = tmp_path / "figs"
    argv = ["figures", "--report", str(report), "--out", str(out), "--formats", "png", "--quiet"]
    args = parser.parse_args(argv)
    args.func(args)
    assert f"wrote {out}/: " + ", ".join(sorted(["index.json"] + [f"{s}.png" for s in PER_LEVEL])) \
        in capsys.readouterr().out  # the 5 figures and their index
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
        fig = plot_posteriors(ch, 2, method_colours(rep.methods))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["nn", "qe_eb", "qe_eb (N0-only debias)", "truth", "outside prior"]
    grey = fig.legends[0].get_patches()[0].get_facecolor()  # the "outside prior" shading
    lo, hi = fig.axes[3].get_xlim()  # the As marginal: shaded below the prior's lower edge 1.95e-9 only
    shaded = [p.get_bbox() for p in fig.axes[3].patches if same_color(p.get_facecolor(), grey)]
    assert lo < 1.95 < hi and len(shaded) == 1 and shaded[0].x0 == pytest.approx(lo)
    assert shaded[0].x1 == pytest.approx(1.95)
    lower = fig.axes[2]  # row 1, column 0: As against Alens
    star = next(line for line in lower.get_lines() if line.get_marker() == "*")
    np.testing.assert_allclose([star.get_xdata()[0], star.get_ydata()[0]], [1.2, 2.1])  # Alens, 1e9 As
    assert lower.get_xlabel() == r"$A_{\rm lens}$" and lower.get_ylabel() == r"$10^9 A_s$"
    assert not fig.axes[1].get_visible()  # upper triangle hidden


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    d = tmp_path_factory.mktemp("four")
    return make_report(d / "report.h5", methods=FOUR, e_methods=FOUR[:2], n_levels=1)


def _panels(fig):
    """(grid row, grid column) -> image of every map panel of a maps figure."""
    found = {}
    for ax in fig.axes:
        if ax.images:
            spec = ax.get_subplotspec()
            found[spec.rowspan.start, spec.colspan.start] = ax.images[0]
    return found


def test_map_titles_apart_and_colour_bars_beside_their_panels(four):
    with Report(four) as rep:
        fig = plot_maps_kappa(rep)
        # maps_E is laid out by the same code: rows observed Q/U, truth and the 2 E-head methods
        assert 1 + max(r for r, _ in _panels(plot_maps_E(rep))) == 4
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    boxes = [t.get_window_extent(renderer) for t in titles]
    for i, j in zip(*np.triu_indices(len(boxes), 1)):
        assert not boxes[i].overlaps(boxes[j]), (titles[i].get_text(), titles[j].get_text())
    panels = _panels(fig)
    rows = 1 + max(r for r, _ in panels)
    assert rows == 2 + len(FOUR)  # observed Q/U, truth, one row per method
    right = max(im.axes.get_window_extent(renderer).x1 for im in panels.values())
    bars = {id(im.colorbar): (row, im) for (row, _), im in panels.items() if im.colorbar is not None}
    assert sorted(row for row, _ in bars.values()) == [0, 1]
    for row, im in bars.values():
        # the panels on this colour scale: row 0 (Q, U) or every other row (truth, maps, residuals)
        own = {r for (r, _), other in panels.items() if other.get_clim() == im.get_clim()}
        assert own == ({0} if row == 0 else set(range(1, rows)))
        boxes = [p.axes.get_window_extent(renderer) for (r, _), p in panels.items() if r in own]
        bar = im.colorbar.ax.get_window_extent(renderer)
        label = im.colorbar.ax.yaxis.label.get_window_extent(renderer)
        assert right < bar.x0 < label.x0  # right of every panel, label outside the bar
        assert min(b.y0 for b in boxes) - 1 <= bar.y0 < bar.y1 <= max(b.y1 for b in boxes) + 1


def test_kappa_maps_shown_low_passed_to_the_analysis_lmax(four):
    with Report(four) as rep, h5py.File(four, "r") as f:
        panels = _panels(plot_maps_kappa(rep))
        lmax = f["bins/edges"][-1]
        geom = FlatSkyGeometry(tuple(f.attrs["shape"]), f.attrs["pixel_arcmin"])
        raw = {label: f[f"examples/{label}/kappa"][0] for label in FOUR}
        truth = f["examples/kappa"][0]
    shown = {label: panels[2 + i, 0].get_array() for i, label in enumerate(FOUR)}
    # the QE's white noise up to the pixel scale is mostly removed; the smooth network maps are kept
    assert shown["qe_eb"].std() < 0.5 * raw["qe_eb"].std()
    assert shown["nn"].std() > 0.9 * raw["nn"].std()
    ell = geom.ell()
    kept, cut = geom.map2fourier(shown["qe_eb"]), geom.map2fourier(raw["qe_eb"])
    np.testing.assert_allclose(kept[ell <= lmax], cut[ell <= lmax], rtol=1e-4, atol=1e-6 * np.abs(cut).max())
    assert np.abs(kept[ell >= (1 + ROLLOFF) * lmax]).max() < 1e-6 * np.abs(cut).max()
    # residuals are those of the displayed maps, on the colour scale of the displayed truth
    np.testing.assert_allclose(panels[4, 1].get_array(), shown["qe_eb"] - panels[1, 0].get_array(), atol=1e-6)
    assert panels[1, 0].get_array().std() < truth.std()
    clims = {im.get_clim() for (r, _), im in panels.items() if r >= 1}
    assert len(clims) == 1


def test_cosmology_panels_own_y_range_legend_by_index_theory_in_point_colour(four, tmp_path):
    path = tmp_path / "report.h5"
    path.write_bytes(four.read_bytes())
    with h5py.File(path, "a") as f:
        clkk = f["cosmology/clkk"][()][::-1]  # amplitude order 2, 1, 0: unlike the index order
        f["cosmology/clkk"][...] = clkk
        for c in range(3):  # one wild method: its debiased power swings by +-20 x C^kk
            auto = f[f"methods/nn/groups/cosmo{c}_noise0/auto_mean"]
            auto[...] = auto[()] + 20 * clkk[c] * (-1.0) ** np.arange(auto.shape[0])
    with Report(path) as rep:
        fig = plot_cosmology(rep, 0)
        mean = rep.theory_clkk(0)
    legend = [t.get_text().split(" (")[0] for t in fig.legends[0].get_texts()]
    assert legend == ["cosmo 0", "cosmo 1", "cosmo 2"]
    span = {}
    for ax in fig.axes:
        bars = {c.get_label(): c for c in ax.containers}
        lines = {line.get_label(): line for line in ax.get_lines() if line.get_label().endswith(" theory")}
        assert len(bars) == len(lines) == 3
        for name, bar in bars.items():
            line = lines[f"{name} theory"]
            assert same_color(line.get_color(), bar.lines[0].get_color())
            np.testing.assert_allclose(line.get_ydata(), clkk[int(name.split()[1])] / mean)
        lo, hi = ax.get_ylim()
        points = np.concatenate([bar.lines[0].get_ydata() for bar in bars.values()])
        assert np.mean((lo <= points) & (points <= hi)) >= 0.8  # outliers may be clipped, not the bulk
        assert lo <= np.min(clkk / mean) and np.max(clkk / mean) <= hi  # theory always in range
        span[ax.get_title()] = hi - lo
    assert all(span[label] < 0.25 * span["nn"] for label in FOUR[1:])  # the wild method flattens no other


def test_log_multipole_axis_ticks_narrow_ranges_densely():
    def ticks(lo, hi):
        ax = new_figure("line").add_subplot()
        ax.plot([lo, hi], [1, 2])
        log_multipoles(ax)
        ax.figure.canvas.draw()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
        assert labels == [f"{t:g}" for t in shown]
        return shown

    assert ticks(240, 1450) == [300, 500, 700, 1000]
    assert ticks(30, 3000) == [50, 100, 200, 500, 1000, 2000]

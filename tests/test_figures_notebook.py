"""notebooks/evaluation.ipynb runs against a synthetic report and redraws the rho and noise figures."""

import base64
import io
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib.image import imread

from report_factory import make_report

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "evaluation.ipynb"


def test_notebook_reads_report_and_draws_rho_and_noise(tmp_path, monkeypatch):
    report = make_report(tmp_path / "report.h5", methods=("nn", "qe_eb"), n_levels=2, examples=0)
    monkeypatch.setenv("DEEPCMB_REPORT", str(report))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "noise level 1 uK-arcmin" in text
    with h5py.File(report, "r") as f:  # the printed table is the report's rho^2 of the first level
        for label in ("nn", "qe_eb"):
            g = f[f"methods/{label}/groups/noise0"]
            for value, err in zip(g["rho2"][()], 2 * np.abs(g["rho"][()]) * g["rho_err"][()]):
                assert f"{value:.4f} +- {err:.4f}" in text
    images = [imread(io.BytesIO(base64.b64decode(o.data["image/png"])))
              for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 2  # the rho and noise figures
    for image in images:
        assert image.shape[1] > 400 and image[..., :3].var() > 1e-3

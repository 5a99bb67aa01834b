"""notebooks/quickstart.ipynb runs end to end: simulate, the QE and the shipped network, metrics, the network's
calibrated posterior, figures."""

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_the_network_beats_the_qe_at_low_L(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    rows = [[float(v) for v in line.split()] for line in text.splitlines() if re.fullmatch(r"\s*[\d.\s]+", line)]
    table = np.array(rows)  # L, rho2 qe, rho2 nn per bin of 150 <= L <= 1500
    assert table.shape == (9, 3) and np.all((table[:, 1:] > 0) & (table[:, 1:] < 1))
    assert np.all(np.diff(table[:, 0]) > 0)
    assert table[0, 2] > table[0, 1]  # 32 maps: the network's gain is clear in the first bin
    cover = re.search(r"coverage 1 sigma ([\d.]+) .*, 2 sigma ([\d.]+)", text)
    # the shipped calibration on 32 fresh maps: errors of the mean about 0.007 and 0.003
    assert abs(float(cover.group(1)) - 0.683) < 0.05 and abs(float(cover.group(2)) - 0.954) < 0.025, cover.group(0)
    images = [imread(io.BytesIO(base64.b64decode(o.data["image/png"])))
              for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 2  # spectra, maps
    for image in images:
        assert image.shape[1] > 600 and image[..., :3].var() > 1e-3

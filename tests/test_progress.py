"""What deepcmb shows while it runs: progress bars or periodic log records, ``deepcmb run``'s stage lines,
a quiet backend start-up, one line for a missing backend, and a command line that starts without heavy
imports."""

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deepcmb import pipeline, progress
from deepcmb.progress import Progress, format_duration, track

ROOT = Path(__file__).resolve().parents[1]


def _terminal(monkeypatch, yes):
    """Whether stderr (capsys's, so called in the test itself) is a terminal; and this is no Jupyter kernel."""
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: yes, raising=False)


def _records(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("deepcmb")]


def test_without_a_terminal_progress_is_periodic_one_line_records(monkeypatch, caplog, capsys):
    _terminal(monkeypatch, False)
    caplog.set_level(logging.INFO, logger="deepcmb")
    with Progress(6, "simulate", "map", interval=0.05) as bar:
        for _ in range(6):
            time.sleep(0.03)
            bar.update(1, loss="0.5")
    records = _records(caplog)
    # a record at most every 0.05 s over ~0.18 s, and one when the loop ends
    assert 2 <= len(records) <= 5, records
    assert all("\n" not in r and "\r" not in r for r in records)
    beats, last = records[:-1], records[-1]
    assert all(r.startswith("simulate: ") and " maps (" in r and "elapsed" in r and "ETA" in r and "loss 0.5" in r
               for r in beats), beats
    assert last.startswith("simulate: 6 maps done in"), last
    assert "\r" not in capsys.readouterr().err  # no bar drawn


def test_a_short_or_transient_loop_records_nothing(monkeypatch, caplog):
    _terminal(monkeypatch, False)
    caplog.set_level(logging.INFO, logger="deepcmb")
    assert list(track(range(3), "figures", "figure")) == [0, 1, 2]  # faster than the interval
    with Progress(4, "epoch 1/2", "batch", leave=False, interval=0.0) as bar:
        bar.update(4)
    records = _records(caplog)  # the heartbeat, no end record for a transient (leave=False) loop
    assert len(records) == 1 and records[0].startswith("epoch 1/2: 4/4 batches (100%), "), records


def test_a_terminal_gets_a_bar_unless_bars_are_off(monkeypatch, caplog, capsys):
    _terminal(monkeypatch, True)
    caplog.set_level(logging.INFO, logger="deepcmb")
    for _ in track(range(3), "evaluate", "map"):
        pass
    assert "\r" in capsys.readouterr().err and not _records(caplog)
    with progress.bars(False):
        with Progress(2, "evaluate", "map", interval=0.0) as bar:
            bar.update(2)
    assert "\r" not in capsys.readouterr().err and _records(caplog)[0].startswith("evaluate: 2/2 maps (100%)")


def test_disabled_progress_shows_nothing(monkeypatch, caplog, capsys):
    _terminal(monkeypatch, True)
    caplog.set_level(logging.INFO, logger="deepcmb")
    with Progress(2, "evaluate", "map", enabled=False, interval=0.0) as bar:
        bar.update(2)
    assert not capsys.readouterr().err and not _records(caplog)


def test_durations_and_eta():
    assert [format_duration(s) for s in (4.4, 65, 3 * 3600 + 7 * 60 + 9)] == ["4s", "1m05s", "3h07m"]
    bar = Progress(100, "simulate", "map", enabled=False, initial=20)
    bar.update(20)  # 20 maps done here (of the 80 left) in 10 s: 60 maps left take 30 s
    assert bar.status(bar.t0 + 10.0) == "simulate: 40/100 maps (40%), 2.0 maps/s, elapsed 10s, ETA 30s"


class _FakeStage:
    resumes = False

    def __init__(self, seen):
        self.seen = seen

    def run(self, config, files, out, *, overwrite, progress):
        # a stage of `deepcmb run` reports progress, as records even on a terminal (no --verbose)
        with Progress(2, "simulate", "map", enabled=progress, interval=0.0) as bar:
            bar.update(2)
        self.seen.append(progress)
        Path(out).write_text("done")
        return Path(out)


def test_deepcmb_run_prints_a_line_when_each_stage_starts_and_ends(tmp_path, monkeypatch, caplog, capsys):
    _terminal(monkeypatch, True)
    caplog.set_level(logging.INFO, logger="deepcmb")
    preset = tmp_path / "evaluate" / "tiny.yaml"
    preset.parent.mkdir()
    preset.write_text("{}\n")
    seen = []

    def plan(preset_file, root, out, workers=None, overrides=()):
        steps = [pipeline.Step(name, _FakeStage(seen), out / f"{name}.txt", {}, {}, []) for name in ("sims", "train")]
        for s in steps:
            s.key = s.name
        return steps

    monkeypatch.setattr(pipeline, "plan_stages", plan)
    lines = []
    pipeline.run_pipeline(str(preset), out=tmp_path / "out", echo=lines.append)
    assert [ln.split()[2] for ln in lines[:4]] == ["started", "done", "started", "done"], lines
    assert lines[0].startswith("[1/2] sims ") and lines[2].startswith("[2/2] train")
    assert lines[1].split()[2:4] == ["done", "in"] and lines[1].endswith("sims.txt")
    assert seen == [True, True]
    assert "\r" not in capsys.readouterr().err and len(_records(caplog)) == 4  # records, no bars
    lines.clear()
    pipeline.run_pipeline(str(preset), out=tmp_path / "out", echo=lines.append)
    assert [ln.split()[2] for ln in lines[:2]] == ["re-used", "re-used"]


def _python(code, env=None, **kw):
    full = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "DEEPCMB_BACKEND_LOGS")}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), kw.pop("path", ""), full.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**full, **(env or {})}, timeout=300, **kw)


FAKE_KERAS = """\
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
class distribution:
    @staticmethod
    def list_devices():
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit\\n")
        return ["cpu:0"]
"""


def test_backend_start_up_lines_are_silenced_unless_asked_for(tmp_path):
    """What the backend writes straight to file descriptor 2 while it is imported and first lists its devices."""
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "__init__.py").write_text(FAKE_KERAS)
    code = """
        import sys
        from deepcmb.stages import STAGES
        STAGES["reconstruct_nn"].function
        print("stage imported", file=sys.stderr)
    """
    quiet = _python(code, path=str(tmp_path))
    assert quiet.returncode == 0 and quiet.stderr == "stage imported\n", quiet.stderr
    loud = _python(code, {"DEEPCMB_BACKEND_LOGS": "1"}, path=str(tmp_path))
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr and "cuInit" in loud.stderr, loud.stderr


def test_the_real_backend_starts_without_a_line_on_stderr():
    res = _python("""
        from deepcmb.stages import STAGES
        STAGES["train"].function
        import keras
        print(keras.backend.backend())
    """, {"KERAS_BACKEND": "tensorflow"})
    assert res.returncode == 0 and res.stdout == "tensorflow\n" and res.stderr == "", res.stderr


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_a_missing_backend_is_one_line_naming_the_extra(tmp_path):
    sims = tmp_path / "sims.h5"
    sims.write_bytes(b"")  # the backend is imported before the file is read
    res = _python(f"""
        import sys
        from deepcmb.cli import main
        sys.exit(main(["train", "--config", {str(ROOT / "train" / "quick.yaml")!r}, "--sims", {str(sims)!r},
                       "--out", {str(tmp_path / "run")!r}]))
    """, {"KERAS_BACKEND": "torch"})
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("deepcmb train: error: the Keras backend 'torch' cannot be imported "
                                 "(No module named 'torch'); install it with pip install 'deepcmb[torch]'")
    assert not (tmp_path / "run").exists()


def test_help_imports_no_backend_plotting_or_statistics():
    res = _python("""
        import sys
        from deepcmb.cli import main
        for argv in (["--help"], ["train", "--help"], ["reconstruct", "--help"], ["run", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = ("tensorflow", "keras", "jax", "torch", "matplotlib", "scipy.stats", "tqdm")
        print([m for m in heavy if m in sys.modules], file=sys.stderr)
    """)
    assert res.returncode == 0 and res.stderr == "[]\n", res.stderr

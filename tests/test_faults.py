"""Faults injected into the stages: SIGTERM and SIGKILL in the middle of a command, two commands on one
output, a full disk (a file size limit), corrupted HDF5 headers.

After each: one line on stderr and the documented exit code, nothing under a final name that is not whole,
no temporary or stray file, no orphan process, and the same command completes with the result of an
uninterrupted run. Faults that need a process of their own run the command line as a subprocess, each
bounded by a timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.cli import main
from deepcmb.errors import OutputLockedError
from deepcmb.interrupts import Interrupted, interruptible
from deepcmb.io.lock import lock_path, output_lock

try:
    import psutil
except ImportError:  # the orphan checks read /proc instead
    psutil = None

TIMEOUT = 120
"""Seconds any one command may take."""

# 24 units of 4 maps: long enough to be interrupted between units, a few seconds in all
SIMS = {"seed": 7, "n_maps": 96, "geometry": {"shape": [64, 64]},
        "cosmology": {"sampling": "grid", "grid": {"Alens": [1.0, 0.8]}},
        "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 4}}
TRAIN_SIMS = {"seed": 5, "n_maps": 64, "geometry": {"shape": [32, 32]},
              "cosmology": {"sampling": "grid", "grid": {"Alens": [1.0, 0.8]}},
              "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 16}}
# the smallest network that has dropout (one level, one head: seconds to trace)
TRAIN = {"seed": 3, "data": {"split": [0.75, 0.125, 0.125]},
         "model": {"filters": [4], "kernel_size": 3, "activation": "relu", "dropout": 0.3, "outputs": ["kappa"],
                   "padding": "same", "normalization": "none"},
         "training": {"batch_size": 8, "epochs": 8, "jit_compile": False}}
"""Tiny epochs: enough of them that a signal sent after the first checkpoint arrives before the last one."""


def _yaml(path, obj):
    path.write_text(yaml.safe_dump(obj))
    return str(path)


def _command(*args):
    return [sys.executable, "-m", "deepcmb.cli", *args]


def _start(args, limit_bytes=None):
    """The command line as a subprocess; ``limit_bytes``: its file size limit (RLIMIT_FSIZE), set in the
    child itself (preexec_fn is unsafe once the test process runs threads, as Keras does)."""
    if limit_bytes is None:
        cmd = _command(*args)
    else:
        cmd = [sys.executable, "-c", "import resource, runpy, sys; "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
               f"sys.argv = ['deepcmb', *{list(args)!r}]; runpy.run_module('deepcmb.cli', run_name='__main__')"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=TIMEOUT):
    """Wait for a subprocess; returns ``(returncode, stderr)``."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{proc.args} took more than {timeout} s")
    return proc.returncode, err


def _wait_for(condition, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def _one_line(err, *words):
    """stderr is one line (log records aside), without a traceback, and holds ``words``."""
    lines = [line for line in err.splitlines() if line.startswith("deepcmb ")]
    assert "Traceback" not in err and len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _descendants(pid):
    """Process ids of every descendant of ``pid``."""
    if psutil is not None:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        kids = [p for p, pp in parents.items() if pp == todo.pop()]
        out += kids
        todo += kids
    return out


def _running(pid):
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _assert_gone(pids, timeout=30):
    _wait_for(lambda: not any(_running(p) for p in pids), f"processes {pids} to end (orphans)", timeout)


def _maps(path):
    with h5py.File(path, "r") as f:
        return {f"{g}/{k}": f[g][k][...] for g in ("maps", "meta") for k in f[g]}


def _assert_same_maps(a, b):
    a, b = _maps(a), _maps(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def _no_strays(folder, *keep):
    """Nothing in ``folder`` but ``keep``: no temporary file, lock or partial folder."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The configs and an uninterrupted simulation of :data:`SIMS` (one worker), to compare with."""
    tmp = tmp_path_factory.mktemp("faults")
    cfg = _yaml(tmp / "sims.yaml", SIMS)
    reference = tmp / "reference.h5"
    assert main(["simulate", "--config", cfg, "--out", str(reference), "--workers", "1", "--quiet"]) == 0
    return tmp, cfg, reference


def test_sigterm_then_sigkill_mid_simulate_resume_to_the_same_maps_without_orphans(work, tmp_path):
    _, cfg, reference = work
    out = tmp_path / "sims.h5"
    partial = tmp_path / "sims.h5.partial"
    args = ["simulate", "--config", cfg, "--out", str(out), "--workers", "2", "--quiet"]

    def units():
        return len(list(partial.glob("unit_*.npz")))

    # SIGTERM, as a batch system sends at a job's time limit, to the parent alone
    proc = _start(args)
    _wait_for(lambda: units() >= 2, "two saved units")
    children = _descendants(proc.pid)
    assert len(children) >= 2  # the workers (and multiprocessing's resource tracker)
    os.kill(proc.pid, signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143
    _one_line(err, "deepcmb simulate: interrupted (SIGTERM); re-run the same command to resume")
    _assert_gone(children)
    n_term = units()
    assert 2 <= n_term <= 12  # signalled right after the second unit: far from the end
    _no_strays(tmp_path, "sims.h5.partial")  # no lock, no OUT, no OUT.tmp
    assert not list(partial.glob("tmp_*"))

    # SIGKILL of the parent: the workers end with it, the lock it leaves is stale
    proc = _start(args)
    _wait_for(lambda: units() >= n_term + 2, "two more saved units")
    children = _descendants(proc.pid)
    proc.kill()
    _finish(proc)
    _assert_gone(children)
    assert lock_path(out).exists() and not out.exists()

    code, err = _finish(_start(args))
    assert code == 0, err
    assert "taking over a stale lock" in err
    _no_strays(tmp_path, "sims.h5")
    _assert_same_maps(out, reference)


def test_a_second_command_on_the_same_output_exits_2_naming_the_first(work, tmp_path, capsys):
    _, cfg, reference = work
    out = tmp_path / "sims.h5"
    args = ["simulate", "--config", cfg, "--out", str(out), "--workers", "2", "--quiet"]
    first = _start(args)
    _wait_for(lambda: lock_path(out).exists(), "the first command's lock")
    assert main(args) == 2
    _one_line(capsys.readouterr().err, f"deepcmb simulate: error: {out} is being written by pid {first.pid} on ",
              "simulate --config")
    code, err = _finish(first)
    assert code == 0, err
    _no_strays(tmp_path, "sims.h5")
    _assert_same_maps(out, reference)


@pytest.mark.parametrize("argv", [
    ["simulate", "--config", "CFG", "--out", "OUT"],
    ["train", "--config", "CFG", "--sims", "IN", "--out", "OUT"],
    ["reconstruct", "--method", "qe", "--sims", "IN", "--out", "OUT"],
    ["reconstruct", "--method", "nn", "--sims", "IN", "--out", "OUT"],
    ["reconstruct", "--method", "map", "--sims", "IN", "--out", "OUT"],
    ["calibrate", "--sims", "IN", "--rec", "IN", "--out", "OUT"],
    ["evaluate", "--config", "CFG", "--sims", "IN", "--rec", "qe=IN", "--out", "OUT"],
    ["params", "--config", "CFG", "--report", "IN", "--out", "OUT"],
    ["figures", "--report", "IN", "--out", "OUT"],
    ["results", "--eval", "test=IN", "--out", "OUT"],
    ["run", "--preset", "quick", "--out", "OUT"],
], ids=lambda a: "-".join(a[:3:2] if a[1] == "--method" else a[:1]))
def test_every_command_takes_the_lock_of_its_output(argv, work, tmp_path, capsys):
    _, _, reference = work
    out = tmp_path / "out"
    cfg = _yaml(tmp_path / "any.yaml", {"evaluate": {}, "params": {}})  # read by each stage after the lock
    given = {"CFG": cfg, "IN": str(reference), "OUT": str(out), "qe=IN": f"qe={reference}",
             "test=IN": f"test={reference}"}
    with output_lock(out) as lock:
        assert main([given.get(a, a) for a in argv]) == 2
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    _one_line(capsys.readouterr().err, f"error: {out} is being written by pid {os.getpid()} on ")
    assert not out.exists() and not lock.exists()


def test_stale_and_foreign_locks(tmp_path, caplog):
    out = tmp_path / "sims.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    holder = {"pid": int(dead.stdout), "command": "deepcmb simulate ...", "started": "2026-12-03T20:41:07+00:00"}
    lock_path(out).write_text(json.dumps({**holder, "host": socket.gethostname()}))
    with output_lock(out):
        pass
    assert "taking over a stale lock" in caplog.text and f"pid {holder['pid']}" in caplog.text
    assert not lock_path(out).exists()
    # another host's process cannot be checked from here: never taken over
    lock_path(out).write_text(json.dumps({**holder, "host": "elsewhere.invalid"}))
    with pytest.raises(OutputLockedError, match="on elsewhere.invalid .*; if that command no longer runs, delete "):
        with output_lock(out):
            pass
    assert lock_path(out).exists()


def test_a_file_size_limit_gives_one_line_then_the_same_command_resumes(work, tmp_path):
    _, cfg, reference = work
    out = tmp_path / "sims.h5"
    args = ["simulate", "--config", cfg, "--out", str(out), "--workers", "1", "--quiet"]
    # a unit (4 maps) fits, the file (96 maps, 4.5 MiB) does not: the HDF5 writes fail
    code, err = _finish(_start(args, limit_bytes=1 << 20))
    assert code == 2
    _one_line(err, f"deepcmb simulate: error: {out}: cannot be written (File too large); the file size limit")
    _no_strays(tmp_path, "sims.h5.partial")
    assert len(list((tmp_path / "sims.h5.partial").glob("unit_*.npz"))) == 24
    assert main(args) == 0
    _no_strays(tmp_path, "sims.h5")
    _assert_same_maps(out, reference)
    # the reconstruction writer too
    rec = tmp_path / "rec.h5"
    args = ["reconstruct", "--method", "qe", "--sims", str(out), "--out", str(rec), "--quiet"]
    code, err = _finish(_start(args, limit_bytes=1 << 20))
    assert code == 2
    _one_line(err, f"deepcmb reconstruct: error: {rec}: cannot be written (File too large)")
    _no_strays(tmp_path, "sims.h5")
    assert main(args) == 0
    _no_strays(tmp_path, "sims.h5", "rec.h5")


def test_sigterm_or_sigkill_mid_training_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    keras = pytest.importorskip("keras")
    sims = tmp_path / "sims.h5"
    assert main(["simulate", "--config", _yaml(tmp_path / "sims.yaml", TRAIN_SIMS), "--out", str(sims),
                 "--workers", "1", "--quiet"]) == 0
    cfg = _yaml(tmp_path / "train.yaml", TRAIN)
    straight = tmp_path / "straight"
    assert main(["train", "--config", cfg, "--sims", str(sims), "--out", str(straight), "--quiet"]) == 0

    for signum in (signal.SIGTERM, signal.SIGKILL):
        cut = tmp_path / signum.name
        args = ["train", "--config", cfg, "--sims", str(sims), "--out", str(cut), "--quiet"]
        proc = _start(args)
        state = cut / "checkpoints" / "last.json"
        _wait_for(state.exists, "the first checkpoint")
        os.kill(proc.pid, signum)
        code, err = _finish(proc)
        saved = json.loads(state.read_text())
        assert 1 <= saved["epoch"] < TRAIN["training"]["epochs"] and not saved["finished"] and saved["random_state"]
        assert not (cut / "model.keras").exists()
        if signum == signal.SIGTERM:
            assert code == 143
            _one_line(err, "deepcmb train: interrupted (SIGTERM); re-run the same command to resume")
            assert not lock_path(cut).exists()
            assert not list(cut.rglob("tmp_*")) and not list(cut.rglob("*.tmp"))
        else:
            assert code == -signal.SIGKILL  # no handler runs: the lock stays behind, stale
        assert main(args) == 0
        capsys.readouterr()
        assert not lock_path(cut).exists() and not list(cut.rglob("*.tmp"))
        for name in ("checkpoints/last.keras", "model.keras"):
            a = keras.saving.load_model(straight / name, safe_mode=True).get_weights()
            b = keras.saving.load_model(cut / name, safe_mode=True).get_weights()
            assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b)), (signum.name, name)
        assert (straight / "history.csv").read_text().count("\n") == (cut / "history.csv").read_text().count("\n") \
            == TRAIN["training"]["epochs"] + 1


def test_a_corrupted_header_gives_one_line_naming_the_file(work, tmp_path, capsys):
    _, _, reference = work
    bad = tmp_path / "bad.h5"
    data = bytearray(reference.read_bytes())
    data[:512] = np.random.default_rng(0).bytes(512)
    bad.write_bytes(bytes(data))
    train_cfg = _yaml(tmp_path / "train.yaml", TRAIN)
    eval_cfg = _yaml(tmp_path / "eval.yaml", {"evaluate": {}, "params": {}})
    out = tmp_path / "out"
    for argv in (["train", "--config", train_cfg, "--sims", str(bad)],
                 ["reconstruct", "--method", "qe", "--sims", str(bad)],
                 ["reconstruct", "--method", "nn", "--sims", str(bad)],
                 ["reconstruct", "--method", "map", "--sims", str(bad)],
                 ["reconstruct", "--method", "qe", "--sims", str(reference), "--uncertainty", str(bad)],
                 ["calibrate", "--sims", str(bad), "--rec", str(bad)],
                 ["evaluate", "--config", eval_cfg, "--sims", str(bad), "--rec", f"qe={bad}"],
                 ["evaluate", "--config", eval_cfg, "--sims", str(reference), "--rec", f"qe={bad}"],
                 ["params", "--config", eval_cfg, "--report", str(bad)],
                 ["figures", "--report", str(bad)]):
        assert main([*argv, "--out", str(out), "--quiet"]) == 2, argv
        _one_line(capsys.readouterr().err, f"deepcmb {argv[0]}: error: {bad}: not a readable HDF5 file")
        _no_strays(tmp_path, "bad.h5", "train.yaml", "eval.yaml")


# a worker killed while it sends a large result leaves half a message in the pool's result pipe: the
# interrupted process must still exit (it hung at exit, its manager thread waiting for the rest)
MID_SEND = """
import time
import numpy as np
from deepcmb.executor import open_executor

def read_bytes():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

try:
    with open_executor(2) as ex:
        ex.submit(np.zeros, 25_000_000)  # 200 MB back through the result pipe
        start, deadline = read_bytes(), time.monotonic() + 60
        while read_bytes() - start < 50_000_000 and time.monotonic() < deadline:
            time.sleep(0.001)
        raise KeyboardInterrupt  # a quarter of the result received
except KeyboardInterrupt:
    print("interrupted mid-send")
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/self/io")
def test_workers_killed_while_sending_a_result_do_not_hang_the_parent():
    res = subprocess.run([sys.executable, "-c", MID_SEND], capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0 and res.stdout.strip() == "interrupted mid-send", res.stderr


def test_interruptible_turns_sigterm_and_sigint_into_interrupted():
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        before = signal.getsignal(signum)
        with pytest.raises(Interrupted) as info:
            with interruptible():
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler raises at once
        assert info.value.exit_code == code and info.value.name == signal.Signals(signum).name
        assert signal.getsignal(signum) is before

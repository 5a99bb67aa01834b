"""Running on a cluster: a Dask cluster found through its scheduler file, a worker lost in the middle of a
simulation, work sized from the cluster, default workers from the CPU affinity."""

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import pytest
import yaml

from deepcmb.executor import capacity, default_workers, open_executor

CFG = {"seed": 21, "n_maps": 128, "geometry": {"shape": [64, 64], "pixel_arcmin": 2.34375},
       "instrument": {"noise_p_uk_arcmin": [1.0]}, "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 4}}


def _wait(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def _maps(path):
    with h5py.File(path, "r") as f:
        return {k: f["maps"][k][...] for k in f["maps"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Dask scheduler and two single-threaded workers on loopback, started from the command line as on a
    cluster; yields ``(scheduler_file, worker_processes)`` and stops them all (the lost-worker test, which
    kills one, runs last)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    pytest.importorskip("distributed")
    dask = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    if dask is None:
        pytest.skip("the dask command is not installed")
    sched_file = tmp_path / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard"], **quiet)]
    try:
        _wait(sched_file.exists, 60, "the scheduler file")
        workers = [subprocess.Popen([dask, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                                     "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--no-nanny"],
                                    **quiet) for _ in range(2)]
        procs += workers
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield sched_file, workers
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def test_work_in_flight_follows_the_cluster_size(cluster):
    """Twice the cluster's threads are kept in flight (not twice the local --workers)."""
    sched_file, _ = cluster
    with open_executor(1, scheduler_file=str(sched_file)) as client:
        assert capacity(client) == 2
    with open_executor(3) as pool:
        assert capacity(pool) == 3
    with open_executor(1) as inline:
        assert capacity(inline) == 1


def test_a_scheduler_file_cluster_survives_a_lost_worker(cluster, tmp_path):
    """``--scheduler-file``: one worker killed (SIGKILL) once the first units are saved; the simulation completes,
    byte-identical to a run on one local process."""
    sched_file, workers = cluster
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    local, remote = tmp_path / "local.h5", tmp_path / "dask.h5"
    run = subprocess.Popen([sys.executable, "-m", "deepcmb.cli", "simulate", "--config", str(cfg), "--out", str(remote),
                            "--scheduler-file", str(sched_file), "--quiet"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "dask.h5.partial"
    _wait(lambda: len(list(partial.glob("unit_*.npz"))) >= 2 or run.poll() is not None, 120, "the first units")
    assert not remote.exists(), "the simulation ended before a worker could be lost: make it longer"
    os.kill(workers[0].pid, signal.SIGKILL)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    subprocess.run([sys.executable, "-m", "deepcmb.cli", "simulate", "--config", str(cfg), "--out", str(local),
                    "--workers", "1", "--quiet"], check=True, env=env, timeout=300)
    a, b = _maps(local), _maps(remote)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_default_workers_follow_the_cpu_affinity():
    """The default number of local workers is the cores this process may use (taskset, SLURM)."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = "from deepcmb.executor import default_workers; print(default_workers())"
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60) if shutil.which("taskset") else None
    if done is not None:
        assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
    assert default_workers() == len(os.sched_getaffinity(0))


def _thread_caps():
    from deepcmb.executor import THREAD_VARIABLES

    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def test_local_workers_share_the_cores_among_their_libraries():
    """Each local worker caps CAMB's OpenMP, BLAS and ducc0 at its share of the cores."""
    from deepcmb.executor import run_tasks

    with open_executor(2) as pool:
        caps = list(run_tasks(pool, _thread_caps, [()] * 2))
    share = str(max(default_workers() // 2, 1))
    assert all(set(c.values()) == {share} for c in caps), caps

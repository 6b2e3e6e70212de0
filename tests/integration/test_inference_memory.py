"""Peak memory of the local batch-inference engine does not grow with the number of users (issue 6).

The real ``batch_inference`` task (registered tiny champion, MLflow, fold-in, staged Parquet) runs in a fresh
process on synthetic power-law snapshots of N and 4N users (tokenrec/data/synthetic.py), with K = 200 rows
per user. A thread samples the process's RSS every few milliseconds; the peak while recommending and writing
(after the model is loaded and the fold-in is done, both phases timed by the task's manifest) must agree
within a small tolerance for N and 4N. Holding the output instead of streaming it would cost about 60 bytes a
row as Arrow (far more as pandas or Python objects): 3N x 200 more rows would add about 40 MB, while the
snapshot's own arrays grow by about 1 MB.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_packaging import DS, REPO, SETTINGS, World, build_world, publish_snapshot
from tokenrec.data.synthetic import SyntheticSpec, interaction_data
from tokenrec.tasks import promote, register

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_USERS, N_ITEMS, TOPK = 1_000, 400, 200
SMALL, LARGE = "2026-12-01", "2026-12-02"
TOLERANCE_MB = 20.0  # well below the ~40 MB that 3000 users x 200 rows more, held as Arrow, would add


def spec(n_users: int) -> SyntheticSpec:
    return SyntheticSpec(n_users, N_ITEMS, min_per_user=5, max_per_user=60, chunk_users=500, seed=3)


def rss_mb() -> float:
    """This process's resident set size now (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(overrides: list[str], ds: str) -> None:
    """In this (fresh) process: run batch_inference for ``ds``; print peak RSS and counts as JSON."""
    from tokenrec.config import load_config
    from tokenrec.tasks import batch_inference

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mb()))
            stop.wait(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    summary = batch_inference.run(load_config(overrides=overrides), ds, None)
    stop.set()
    sampler.join()
    durations = summary["durations_s"]
    writing = started + durations["load_model"] + durations["prepare"]  # the streaming phase starts here
    result = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_writing_mb": max(rss for at, rss in samples if at >= writing),
        "samples_writing": sum(at >= writing for at, _ in samples),
        "rows": summary["rows"],
        "users": summary["users"],
    }
    print(json.dumps(result))


def run_measured(world: World, ds: str) -> dict:
    overrides = [
        *SETTINGS,
        f"paths.home={world.cfg.paths.home}",
        f"mlflow.tracking_uri={world.cfg.mlflow.tracking_uri}",
        f"inference.topk={TOPK}",
        "inference.user_batch_size=256",
        "inference.torch_threads=1",
    ]
    code = f"from tests.integration.test_inference_memory import measure; measure({overrides!r}, {ds!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A tiny champion, and snapshots of N and 4N synthetic users (nearly all new: folded in)."""
    world = build_world(tmp_path_factory.mktemp("memory"))
    register.run(world.cfg, DS, world.run_dir)
    promote.run(world.cfg, DS, None)
    small, large = interaction_data(spec(N_USERS)), interaction_data(spec(4 * N_USERS))
    publish_snapshot(world.lake, SMALL, small, world.data.n_users, world.data.n_items)
    publish_snapshot(world.lake, LARGE, large, small.n_users, small.n_items)
    return world


def test_peak_memory_is_flat_in_the_number_of_users(world: World):
    small, large = run_measured(world, SMALL), run_measured(world, LARGE)
    assert (small["users"], large["users"]) == (N_USERS, 4 * N_USERS)
    assert large["rows"] == 4 * N_USERS * TOPK  # no user has seen more than 60 of the 400 items
    assert min(small["samples_writing"], large["samples_writing"]) >= 10  # the phase was observed
    growth = large["peak_rss_writing_mb"] - small["peak_rss_writing_mb"]
    assert growth < TOLERANCE_MB, (small, large)

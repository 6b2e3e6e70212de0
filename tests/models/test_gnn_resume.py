"""R5 for the GNN stage: a LightGCN training process killed with SIGKILL after its first checkpoint and
started again ends with exactly the embeddings of an uninterrupted run (same seed, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.models.conftest import make_walks, write_snapshot

pytestmark = [pytest.mark.model, pytest.mark.slow]

SCRIPT = """
import logging, sys
from pathlib import Path
from tokenrec.config import load_config
from tokenrec.tasks import train_gnn
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
train_gnn.run(load_config(overrides=sys.argv[3:]), Path(sys.argv[1]), Path(sys.argv[2]))
"""

OVERRIDES = [
    "train.progress=false",
    "train.device=cpu",
    "train.checkpoint_every=1",
    "gnn.dim=16",
    "gnn.batch_size=256",
    "gnn.max_epochs=8",
    "gnn.eval_every=2",
    "gnn.threads=2",
    "gnn.lr=0.005",
]


def start(snapshot: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(snapshot), str(run_dir), *OVERRIDES],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if "seconds" not in k} for entry in history]


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    snapshot = write_snapshot(make_walks(n_users=800, n_items=300, length=30), tmp_path / "snapshot")

    reference = tmp_path / "uninterrupted"
    finish(start(snapshot, reference))

    run_dir = tmp_path / "killed"
    process = start(snapshot, run_dir)
    checkpoints = run_dir / "gnn" / "checkpoints"
    deadline = time.monotonic() + 240
    while not any(checkpoints.glob("*/step-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    killed_at = sorted(checkpoints.glob("*/step-*.pt"))  # checkpoints/<fingerprint>/step-*.pt
    assert killed_at and not (run_dir / "gnn" / "embeddings.safetensors").exists()

    log = finish(start(snapshot, run_dir))
    assert "resumed after epoch" in log

    expected = load_file(reference / "gnn" / "embeddings.safetensors")
    got = load_file(run_dir / "gnn" / "embeddings.safetensors")
    assert set(got) == {"user_ego", "item_ego", "user", "item"}
    for name, tensor in expected.items():
        assert (got[name] == tensor).all(), f"{name} differs from the uninterrupted run"
    history = json.loads((run_dir / "gnn" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
    reference_history = json.loads((reference / "gnn" / "history.json").read_text())
    assert without_timings(history) == without_timings(reference_history)
    metrics = json.loads((run_dir / "gnn" / "metrics.json").read_text())
    assert metrics["test"] == json.loads((reference / "gnn" / "metrics.json").read_text())["test"]

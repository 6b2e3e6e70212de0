"""Shared fixtures: one local Spark session per test run, an isolated TOKENREC_HOME per test."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# make test runs two xdist workers on two cores: torch, faiss and BLAS in each worker, and in the jobs the tests
# start, use one thread each; a second thread per process only spins against the other worker's.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# pytest-xdist runs tests in execnet workers whose __main__ has neither __spec__ nor __file__; pyspark.sql.connect
# (imported by Great Expectations) takes that for a doctest run and calls sys.exit(0) when grpcio-status is absent.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly without a CUDA device; Java-less machines skip Spark tests with a reason."""
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    has_java = shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "spark" in item.keywords and not has_java:
            item.add_marker(pytest.mark.skip(reason="needs Java 17 for Spark"))
    items.sort(key=_start_early)


def _start_early(item: pytest.Item) -> int:
    """Longest files first (make test runs them with ``--dist loadfile --no-loadscope-reorder``): whole modules
    marked slow (the Airflow end-to-end files, minutes each), then Spark modules, then the rest. Started last,
    the end-to-end file ran alone on one core for its last two minutes."""
    marks = getattr(item.module, "pytestmark", [])
    module = {mark.name for mark in (marks if isinstance(marks, list) else [marks])}
    return 0 if "slow" in module else 1 if "spark" in item.keywords else 2


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole run (a session takes 10-15 s to start here)."""
    from tokenrec.config import SparkConfig
    from tokenrec.data.spark import get_spark

    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g"))
    yield session
    session.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TOKENREC_HOME for one test."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("TOKENREC_HOME", str(root))
    return root


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA

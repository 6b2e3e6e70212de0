"""Atomic publish survives a killed writer: readers keep the old version, a rerun cleans up (R4).

A real writer process is started and killed half-way (the unit tests of tokenrec/storage.py are in
tests/unit/test_storage.py).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenrec.storage import VERSIONS_DIR, current_version, publish_partition, read_manifest

pytestmark = pytest.mark.integration


def _writer(rows):
    def write(folder):
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"x": rows}), folder / "part-0.parquet")

    return write


def test_killed_writer_leaves_readers_on_the_old_version(tmp_path):
    """R4: kill the writer half-way; readers still see the previous complete partition; a rerun cleans up."""
    part = tmp_path / "t" / "dt=2026-01-01"
    publish_partition(part, _writer([1, 2, 3]), {"rows": 3})
    script = textwrap.dedent(f"""
        import time, pathlib
        import pyarrow as pa, pyarrow.parquet as pq
        from tokenrec.storage import publish_partition
        def write(folder):
            folder.mkdir(parents=True)
            pq.write_table(pa.table({{"x": [9]}}), folder / "part-0.parquet")
            pathlib.Path({str(tmp_path / "half")!r}).touch()
            time.sleep(60)  # killed here, half-way through writing
            pq.write_table(pa.table({{"x": [10]}}), folder / "part-1.parquet")
        publish_partition(pathlib.Path({str(part)!r}), write, {{"rows": 2}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not (tmp_path / "half").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "writer did not start"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert pq.read_table(part).column("x").to_pylist() == [1, 2, 3]
    assert read_manifest(part)["rows"] == 3
    versions = list((part.parent / VERSIONS_DIR / part.name).iterdir())
    assert len(versions) == 2  # the published one and the orphan
    publish_partition(part, _writer([4]), {"rows": 1})
    assert pq.read_table(part).column("x").to_pylist() == [4]
    remaining = {v.name for v in (part.parent / VERSIONS_DIR / part.name).iterdir()}
    assert current_version(part).name in remaining and len(remaining) == 2  # orphan removed, previous kept

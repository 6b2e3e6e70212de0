"""Atomic publish: readers see the old or the new version, never a half-written one (R4)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenrec.errors import LockTimeout, PublishError
from tokenrec.storage import current_version, exclusive_lock, publish_partition, read_manifest

pytestmark = pytest.mark.unit


def _writer(rows):
    def write(folder):
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"x": rows}), folder / "part-0.parquet")

    return write


def test_publish_then_republish(tmp_path):
    part = tmp_path / "t" / "dt=2026-01-01"
    first = publish_partition(part, _writer([1, 2]), {"rows": 2})
    assert pq.read_table(part).column("x").to_pylist() == [1, 2]
    assert read_manifest(part)["rows"] == 2
    second = publish_partition(part, _writer([3]), {"rows": 1})
    assert pq.read_table(part).column("x").to_pylist() == [3]
    assert current_version(part) == second
    assert first.exists()  # one generation kept for readers in flight
    third = publish_partition(part, _writer([4]), {"rows": 1})
    assert not first.exists() and second.exists() and third.exists()
    # readers of the whole table see one partition and skip _versions
    assert pq.read_table(tmp_path / "t").column("x").to_pylist() == [4]


def test_other_partitions_untouched(tmp_path):
    a, b = tmp_path / "t" / "dt=2026-01-01", tmp_path / "t" / "dt=2026-01-02"
    publish_partition(a, _writer([1]), {})
    publish_partition(b, _writer([2]), {})
    before = (a / "part-0.parquet").read_bytes()
    publish_partition(b, _writer([3]), {})
    assert (a / "part-0.parquet").read_bytes() == before


def test_refuses_a_real_folder(tmp_path):
    part = tmp_path / "t" / "dt=2026-01-01"
    part.mkdir(parents=True)
    (part / "data.parquet").write_bytes(b"x")
    with pytest.raises(PublishError, match="real folder"):
        publish_partition(part, _writer([1]), {})
    assert (part / "data.parquet").read_bytes() == b"x"


def test_exclusive_lock_waits_then_gives_up_naming_the_holder_and_is_free_after(tmp_path):
    lock = tmp_path / "id_maps" / ".lock"
    held = r"\.lock: still locked by the ETL of 2026-11-27 \(pid \d+\) after 0 s"
    second = exclusive_lock(lock, timeout_s=0.2, holder="the ETL of 2026-11-28", poll_s=0.05)
    with exclusive_lock(lock, timeout_s=1, holder="the ETL of 2026-11-27"), pytest.raises(LockTimeout, match=held):
        second.__enter__()  # the first lock is held
    with exclusive_lock(lock, timeout_s=0.2, holder="the ETL of 2026-11-28"):  # released on exit, also on error
        assert "2026-11-28" in lock.read_text()
    assert lock.read_text() == ""  # the holder's name is cleared; the file stays (deleting it would be unsafe)

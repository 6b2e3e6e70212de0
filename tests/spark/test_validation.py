"""The Great Expectations gate on interactions: passes a good snapshot, fails loudly on a bad one (R2)."""

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenrec import schema
from tokenrec.config import load_config
from tokenrec.errors import DataValidationError, InputError
from tokenrec.gates.expectations import validate_interactions
from tokenrec.storage import current_version, publish_partition, stage_partition, staged_version

pytestmark = [pytest.mark.spark, pytest.mark.integration]

DS = "2026-01-01"


def _publish(cfg, rows, n_users=3, n_items=4, ds=DS, previous=None, stage=False):
    """Publish (or, as the ETL does, stage) a hand-made snapshot to validate."""
    users, items, secs, splits = zip(*rows, strict=True)
    table = pa.table(
        {
            schema.USER_IDX: pa.array(users, pa.int32()),
            schema.ITEM_IDX: pa.array(items, pa.int32()),
            schema.EVENT_TS: pa.array([dt.datetime.fromtimestamp(s, dt.UTC) for s in secs], schema.UTC_TS),
            schema.SPLIT: pa.array(splits, pa.string()),
        },
        schema=schema.INTERACTIONS,
    )

    def write(folder):
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet")

    manifest = {"rows": len(rows), "n_users": n_users, "n_items": n_items, "previous_snapshot": previous}
    put = stage_partition if stage else publish_partition
    return put(schema.Lake.at(cfg.paths.lake).interactions(ds), write, manifest)


GOOD = [
    (0, 0, 1, "train"), (0, 1, 2, "valid"), (0, 2, 3, "test"),
    (1, 0, 1, "train"), (1, 3, 2, "train"),  # fewer than 3 interactions: no valid/test row
    (2, 1, 1, "train"), (2, 2, 2, "train"), (2, 3, 3, "valid"), (2, 0, 4, "test"),
]


def test_good_snapshot_passes_and_writes_report(spark, home):
    cfg = load_config()
    _publish(cfg, GOOD)
    out = validate_interactions(spark, cfg, DS)
    assert out["expectations"] >= 10
    report = schema.Lake.at(cfg.paths.lake).validation_report("interactions", DS)
    result = json.loads((report / "result.json").read_text())
    assert result["success"] is True
    assert (report / "data_docs" / "index.html").is_file()


def test_corrupt_snapshot_fails_naming_table_expectation_counts_and_rows(spark, home):
    cfg = load_config()
    bad = [*GOOD, (0, 0, 5, "train"), (1, 9, 3, "test"), (2, 2, 4_000_000_000, "train")]  # 2 dups, idx 9 >= 4, future
    _publish(cfg, bad)
    with pytest.raises(DataValidationError) as err:
        validate_interactions(spark, cfg, DS)
    message = str(err.value)
    assert "table interactions" in message and "snapshot_date=2026-01-01" in message
    assert "expect_compound_columns_to_be_unique" in message and "4 of 12 rows unexpected" in message
    assert "expect_column_values_to_be_between(column=item_idx" in message and "1 of 12 rows unexpected" in message
    assert "'item_idx': 9" in message  # a sample offending row
    assert "expect_column_values_to_be_between(column=event_ts" in message
    assert "exactly one test and one valid row" in message  # user 1 now has a test row but no valid row
    result = json.loads(Path(err.value.report_path).read_text())
    assert result["success"] is False


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_the_gate_publishes_a_staged_snapshot_only_when_it_passes(spark, home):
    cfg = load_config()
    snapshot = schema.Lake.at(cfg.paths.lake).interactions(DS)
    published = _publish(cfg, GOOD).resolve()
    before = _files(snapshot)
    bad = _publish(cfg, [*GOOD, (1, 9, 3, "train")], stage=True)  # a rerun of the date with bad rows
    assert current_version(snapshot) == published and staged_version(snapshot) == bad.resolve()
    with pytest.raises(DataValidationError, match="the staged snapshot was not published"):
        validate_interactions(spark, cfg, DS)
    assert current_version(snapshot) == published and _files(snapshot) == before  # readers lost nothing
    assert staged_version(snapshot) == bad.resolve()

    fixed = _publish(cfg, [*GOOD, (3, 2, 3, "train")], n_users=4, stage=True)  # the corrected rerun replaces it
    assert not bad.exists()
    out = validate_interactions(spark, cfg, DS)
    assert out["published_now"] and current_version(snapshot) == fixed.resolve()
    assert staged_version(snapshot) is None and _files(snapshot)["_manifest.json"] != before["_manifest.json"]
    assert validate_interactions(spark, cfg, DS)["published_now"] is False  # a rerun checks the published one


def test_row_count_ratio_against_previous_snapshot(spark, home):
    cfg = load_config(overrides=["validation.max_row_change=0.2"])
    _publish(cfg, GOOD, previous={"snapshot_date": "2025-12-31", "rows": 100})
    with pytest.raises(DataValidationError, match="within 20% of the previous snapshot's 100 rows"):
        validate_interactions(spark, cfg, DS)


def test_missing_snapshot(spark, home):
    with pytest.raises(InputError, match="no staged or published interactions snapshot.*run `tokenrec etl --ds 2026-01-01` first"):
        validate_interactions(spark, load_config(), DS)

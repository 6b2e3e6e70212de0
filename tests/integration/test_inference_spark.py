"""The Spark engine of batch inference writes exactly the local engine's rows (Spark local[2], real MLflow).

A tiny registered champion serves a snapshot with users and items that are new since training; the local and
the Spark engine each stage the date; the Spark files, read in name order, equal the local file row for row.
The Spark output then passes the same gate and publishes like the local one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.test_batch_inference import DS1, NEW_ITEMS, NEW_USERS, next_day
from tests.integration.test_packaging import DS, World, build_world, publish_snapshot
from tokenrec import schema
from tokenrec.storage import read_json
from tokenrec.tasks import batch_inference, promote, publish, register, validate_recommendations

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


def with_engine(world: World, engine: str, **inference) -> object:
    """The world's config with ``engine``; one torch thread in both, so that the scores agree bit for bit."""
    return dataclasses.replace(
        world.cfg,
        inference=dataclasses.replace(world.cfg.inference, engine=engine, torch_threads=1, **inference),
    )


def read_in_name_order(version: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(version.glob("part-*.parquet"))])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, spark) -> World:
    """A champion trained on DS and the snapshot of DS1 with new users and items (fold-in needed)."""
    world = build_world(tmp_path_factory.mktemp("spark-inference"))
    register.run(world.cfg, DS, world.run_dir)
    promote.run(world.cfg, DS, None)
    publish_snapshot(world.lake, DS1, next_day(world.data), world.data.n_users, world.data.n_items)
    return world


@pytest.fixture(scope="module")
def local_rows(world: World) -> pa.Table:
    """What the local engine writes for DS1 (read at once: a later staging of DS1 replaces its version)."""
    staged = batch_inference.run(with_engine(world, "local"), DS1, None)
    return pq.read_table(Path(staged["staged"]) / batch_inference.PART_FILE)


def test_spark_engine_writes_the_local_engine_s_rows_and_loads_the_model_once_per_worker(
    world: World, local_rows: pa.Table
):
    # 16 users per batch and 4 tasks on 2 cores: several batches per task, tasks sharing a Python worker
    staged = batch_inference.run(with_engine(world, "spark", spark_partitions=4), DS1, None)
    version = Path(staged["staged"])

    got = read_in_name_order(version)
    assert got.schema.equals(schema.RECOMMENDATIONS)
    assert got.equals(local_rows)  # same rows, same order, same float bits
    users = set(local_rows.column("user_id").to_pylist())
    assert local_rows.num_rows > 0 and len(users) == staged["active_users"]

    manifest = read_json(version / schema.MANIFEST_FILE)
    assert manifest["engine"] == "spark" and manifest["rows"] == local_rows.num_rows
    assert manifest["fold_in"]["new_users"] == NEW_USERS and manifest["fold_in"]["new_items"] == NEW_ITEMS
    stats = manifest["spark"]
    assert stats["files"] == stats["partitions"] == 4 and stats["batches"] == -(-staged["active_users"] // 16)
    assert stats["model_loads"] == stats["python_workers"] >= 1  # each Python worker loaded the model once
    others = sorted(p.name for p in version.iterdir() if not p.name.startswith("part-"))
    assert others == [schema.MANIFEST_FILE]  # the scratch input is gone

    validate_recommendations.run(world.cfg, DS1, None)  # the same gate passes on the Spark files
    published = publish.run(world.cfg, DS1, None)
    assert published["published"] == str(version)
    assert read_in_name_order(world.lake.recommendations(DS1)).equals(local_rows)


def test_spark_engine_rows_do_not_depend_on_the_number_of_tasks(world: World, local_rows: pa.Table):
    one = batch_inference.run(with_engine(world, "spark", spark_partitions=1), DS1, None)
    files = sorted(Path(one["staged"]).glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-000000.parquet"] and one["spark"]["partitions"] == 1
    assert read_in_name_order(Path(one["staged"])).equals(local_rows)

"""Nightly batch inference end to end on a tiny retrain: batch_inference, validate_recommendations, publish.

Real MLflow (SQLite store), real Great Expectations (pandas), real Parquet. Covers RELIABILITY.md R1 (reruns
are idempotent and touch only their date), R2/R4 for the output (a bad staged output is refused and the
published one stays byte-identical), R7 (one run, one model version; a rerun reuses it), R10 (the output
contract) and fold-in of users and items that are new since training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.integration.test_packaging import (
    DS,
    K,
    World,
    build_world,
    item_id,
    publish_snapshot,
    user_id,
    write_metrics,
)
from tokenrec import schema
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import DataValidationError, PublishError
from tokenrec.llm.scorer import TokenRecScorer
from tokenrec.mlops import registry
from tokenrec.storage import current_version, read_manifest, staged_version
from tokenrec.tasks import batch_inference, promote, publish, register, validate_recommendations

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DS1, DS2 = "2026-11-28", "2026-11-29"
NEW_USERS, NEW_ITEMS = 6, 3


def nightly(cfg, ds: str) -> dict:
    """The three nightly tasks after the ETL, in DAG order."""
    staged = batch_inference.run(cfg, ds, None)
    validate_recommendations.run(cfg, ds, None)
    published = publish.run(cfg, ds, None)
    assert published["changed"] and published["published"] == staged["staged"]
    return published


def next_day(data: InteractionData) -> InteractionData:
    """D's interactions plus new users 48..53 and items 24..26: chains through new nodes, a cold island."""
    u0, i0 = data.n_users, data.n_items
    rows = [(3, i0), (3, i0 + 1)]  # a known user meets two new items
    rows += [(u0, 0), (u0, 1), (u0, 2)]  # a new user on known items
    rows += [(u0 + 1, 6), (u0 + 1, i0)]  # a new user on a known and a new item
    rows += [(u0 + 2, i0), (u0 + 2, i0 + 1)]  # a new user on new items only (second fold-in round)
    rows += [(u0 + 3, i0 + 2), (u0 + 4, i0 + 2)]  # new users and a new item with no trained neighbour: cold
    rows += [(u0 + 5, i) for i in range(i0)]  # a new user who has seen every trained item
    users, items = (np.array(c) for c in zip(*rows, strict=True))
    times = data.timestamps.max() + 1_000_000 * (1 + np.arange(len(rows)))
    return InteractionData.from_arrays(
        np.concatenate([data.users, users]), np.concatenate([data.items, items]),
        np.concatenate([data.timestamps, times]), np.concatenate([data.splits, np.zeros(len(rows), np.int8)]),
        u0 + NEW_USERS, i0 + NEW_ITEMS, name=data.name,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A registered champion (version 1), and D and D+1 through the whole nightly chain."""
    world = build_world(tmp_path_factory.mktemp("nightly"))
    register.run(world.cfg, DS, world.run_dir)
    promote.run(world.cfg, DS, None)
    publish_snapshot(world.lake, DS1, next_day(world.data), world.data.n_users, world.data.n_items)
    nightly(world.cfg, DS)
    nightly(world.cfg, DS1)
    return world


def output(world: World, ds: str) -> pa.Table:
    return pq.read_table(world.lake.recommendations(ds))


def assert_contract(world: World, ds: str) -> None:
    """R10 on the published partition: schema, ranks, scores, known items, unique keys, no seen items."""
    partition = world.lake.recommendations(ds)
    files = sorted(partition.glob("*.parquet"))
    assert files and all(pq.read_schema(f).equals(schema.RECOMMENDATIONS) for f in files)
    rows = output(world, ds).to_pandas()
    data = InteractionData.load(world.lake.interactions(ds))
    seen = {(user_id(u), item_id(i)) for u, i in zip(data.users, data.items, strict=True)}
    assert not seen & set(zip(rows.user_id, rows.item_id, strict=True))
    assert set(rows.item_id) <= {item_id(i) for i in range(data.n_items)}
    assert (
        not rows.duplicated(["user_id", "rank"]).any() and not rows.duplicated(["user_id", "item_id"]).any()
    )
    assert set(rows.user_id) == {user_id(u) for u in np.unique(data.users)}  # every active user
    n_index = read_manifest(partition)["index_items"]
    distinct_seen = {user_id(u): len(np.unique(data.items[data.users == u])) for u in np.unique(data.users)}
    for user, group in rows.groupby("user_id"):
        assert group["rank"].tolist() == list(range(1, min(K, n_index - distinct_seen[user]) + 1))
        assert (np.diff(group.sort_values("rank")["score"].to_numpy()) <= 0).all()
    assert (rows.generated_at == pd_timestamp(ds)).all()
    manifest = read_manifest(partition)
    assert manifest["rows"] == len(rows) and manifest["users"] == rows.user_id.nunique()


def pd_timestamp(ds: str):
    import pandas as pd

    return pd.Timestamp(ds, tz="UTC")


def test_published_outputs_honour_the_contract_and_record_their_model(world: World):
    for ds in (DS, DS1):
        assert_contract(world, ds)
        manifest = read_manifest(world.lake.recommendations(ds))
        assert (manifest["model_name"], manifest["model_version"], manifest["model_source"]) == (
            "tokenrec", "1", "alias champion"
        )  # fmt: skip
        assert (
            manifest["tokenizer_hash"] == registry.resolve_alias(world.cfg, "champion").tags["tokenizer_hash"]
        )
        assert manifest["input_snapshot"].endswith(f"snapshot_date={ds}") and manifest["config_hash"]
        assert staged_version(world.lake.recommendations(ds)) is None  # publish consumed the staged version


def test_known_users_get_the_trained_model_s_top_k(world: World):
    """On the training snapshot, the nightly rows equal the run folder's own scorer (no MLflow in between)."""
    rows = output(world, DS).to_pandas()
    scorer = TokenRecScorer.from_run(world.run_dir, world.cfg)
    sequences = world.data.sequences_before(3)
    users = np.array([0, 9, 30])
    scores, ids = scorer.recommend(users, sequences, K, exclude=[sequences[u] for u in users])
    for row, user in enumerate(users):
        got = rows[rows.user_id == user_id(user)].sort_values("rank")
        assert got.item_id.tolist() == [item_id(i) for i in ids[row]]
        np.testing.assert_allclose(got.score.to_numpy(), scores[row], rtol=1e-5, atol=1e-6)


def test_new_users_and_items_are_folded_in_and_served(world: World):
    manifest = read_manifest(world.lake.recommendations(DS1))
    assert manifest["fold_in"] == {
        "new_users": NEW_USERS, "new_items": NEW_ITEMS, "cold_users": 2, "cold_items": 1, "rounds": 2
    }  # fmt: skip
    assert manifest["index_items"] == world.data.n_items + NEW_ITEMS
    rows = output(world, DS1).to_pandas()
    new_users = {user_id(u) for u in range(world.data.n_users, world.data.n_users + NEW_USERS)}
    assert new_users <= set(rows.user_id)
    # the user who has seen every trained item gets exactly the new items, which the index now holds
    everything_seen = rows[rows.user_id == user_id(world.data.n_users + 5)]
    assert everything_seen["rank"].tolist() == [1, 2, 3]
    assert set(everything_seen.item_id) == {
        item_id(i) for i in range(world.data.n_items, world.data.n_items + 3)
    }


def test_rerunning_a_date_reuses_its_model_version_gives_identical_rows_and_leaves_other_dates_alone(
    world: World,
):
    """R1 + R7: the champion moves to version 2, D is rerun: still version 1, same rows; D+1 untouched."""
    before = output(world, DS)
    other = world.lake.recommendations(DS1)
    other_files = {p.name: p.read_bytes() for p in current_version(other).iterdir()}
    write_metrics(world.run_dir, 0.2)
    assert register.run(world.cfg, DS, world.run_dir)["version"] == 2
    assert promote.run(world.cfg, DS, None)["champion"] == 2

    published = nightly(world.cfg, DS)
    assert published["model_version"] == "1" and published["model_source"].startswith("recorded in v")
    assert output(world, DS).equals(before)
    assert {p.name: p.read_bytes() for p in current_version(other).iterdir()} == other_files
    recompute = dataclasses.replace(
        world.cfg, inference=dataclasses.replace(world.cfg.inference, rerun_model="alias")
    )
    target, source = batch_inference.choose_model(recompute, world.lake.recommendations(DS))
    assert (target.version, source) == (2, "alias champion")


def test_a_corrupt_staged_output_fails_the_gate_and_nothing_is_published(world: World):
    """R2/R4 for the output: the gate names the expectation, counts and rows; readers keep the old bytes."""
    partition = world.lake.recommendations(DS)
    published = current_version(partition)
    published_bytes = {p.name: p.read_bytes() for p in published.iterdir()}
    staged = Path(batch_inference.run(world.cfg, DS, None)["staged"])
    part = staged / batch_inference.PART_FILE
    good = pq.read_table(part)
    rows = good.to_pandas()
    first_user = rows.user_id.iloc[0]
    seen_item = item_id(int(world.data.sequences_before(3)[int(first_user.split("-")[1])][0]))
    rows.loc[0, "item_id"] = seen_item  # an item the user has interacted with
    rows.loc[1, "score"] = rows.loc[0, "score"] + 1.0  # a score that rises with the rank
    pq.write_table(pa.Table.from_pandas(rows, schema=schema.RECOMMENDATIONS, preserve_index=False), part)

    with pytest.raises(DataValidationError) as failed:
        validate_recommendations.run(world.cfg, DS, None)
    message = str(failed.value)
    assert "table recommendations" in message and "Nothing was published" in message
    assert "seen: 1 of" in message or "column=seen" in message
    assert "scores_non_increasing" in message and first_user in message and seen_item in message
    with pytest.raises(PublishError, match="has not passed validate_recommendations"):
        publish.run(world.cfg, DS, None)
    assert current_version(partition) == published
    assert {p.name: p.read_bytes() for p in published.iterdir()} == published_bytes

    pq.write_table(good.cast(good.schema.set(1, pa.field("rank", pa.int32(), nullable=False))), part)
    with pytest.raises(DataValidationError, match="exact schema"):
        validate_recommendations.run(world.cfg, DS, None)

    pq.write_table(good, part)  # the right rows again: the gate passes, but a later change is caught
    validate_recommendations.run(world.cfg, DS, None)
    pq.write_table(good.slice(1), part)
    with pytest.raises(PublishError, match="changed after validate_recommendations"):
        publish.run(world.cfg, DS, None)
    assert {p.name: p.read_bytes() for p in published.iterdir()} == published_bytes

    nightly(world.cfg, DS)  # a clean rerun succeeds and cleans up
    assert output(world, DS).equals(good) and staged_version(partition) is None


def test_no_champion_fails_at_once_with_a_clear_message(world: World):
    latest = InteractionData.load(world.lake.interactions(DS1))
    publish_snapshot(world.lake, DS2, latest, latest.n_users, latest.n_items)
    other = dataclasses.replace(
        world.cfg, mlflow=dataclasses.replace(world.cfg.mlflow, registered_model="unborn")
    )
    with pytest.raises(registry.RegistryError, match="'unborn' has no version with alias 'champion'"):
        batch_inference.run(other, DS2, None)
    assert staged_version(world.lake.recommendations(DS2)) is None
    with pytest.raises(PublishError, match="nothing staged"):
        publish.run(other, DS2, None)


def test_the_gate_validates_chunk_by_chunk_and_catches_a_user_spread_over_two_chunks(world: World):
    """Gate scale-out: the same expectations per chunk of whole users; totals and duplicates across chunks."""
    chunked = dataclasses.replace(world.cfg.inference, gate_chunk_rows=200)
    small = dataclasses.replace(world.cfg, inference=chunked)
    staged = Path(batch_inference.run(world.cfg, DS, None)["staged"])
    good = pq.read_table(staged / batch_inference.PART_FILE)
    passed = validate_recommendations.run(small, DS, None)
    assert passed["chunks"] >= good.num_rows // 200 >= 2

    first_user = good.column("user_id")[0].as_py()
    again = good.filter(pc.equal(good.column("user_id"), first_user))  # the whole user once more, at the end
    pq.write_table(pa.concat_tables([good, again]), staged / batch_inference.PART_FILE)
    with pytest.raises(DataValidationError) as failed:
        validate_recommendations.run(small, DS, None)
    message = str(failed.value)
    assert "in_one_chunk" in message and first_user in message
    assert f"{good.num_rows} rows recorded in the manifest" in message
    pq.write_table(good, staged / batch_inference.PART_FILE)  # the staged output as batch_inference wrote it


@pytest.mark.gpu
def test_batch_inference_on_a_gpu_with_bf16_honours_the_contract(world: World):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ds = "2026-11-30"
    latest = InteractionData.load(world.lake.interactions(DS1))
    publish_snapshot(world.lake, ds, latest, latest.n_users, latest.n_items)
    cfg = world.cfg
    gpu = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cuda"),
                              llm=dataclasses.replace(cfg.llm, precision="bf16"))  # fmt: skip
    nightly(gpu, ds)
    assert_contract(world, ds)

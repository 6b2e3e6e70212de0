"""Synthetic power-law interactions (tokenrec/data/synthetic.py): deterministic, chunked, heavy-tailed."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tokenrec import schema
from tokenrec.config import SourceConfig
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.data.synthetic import (
    SyntheticSpec,
    chunks,
    interaction_data,
    publish_snapshot,
    source_layer,
    write_events,
)
from tokenrec.errors import ConfigError

SPEC = SyntheticSpec(n_users=2_800, n_items=2_000, chunk_users=700, seed=7)  # four whole chunks


def events(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = list(chunks(spec))
    return tuple(
        np.concatenate([getattr(c, name) for c in parts]) for name in ("users", "items", "timestamps")
    )


@pytest.mark.unit
def test_same_spec_same_log_other_seed_other_log():
    a, b = events(SPEC), events(SyntheticSpec(**{**SPEC.__dict__}))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = events(SyntheticSpec(**{**SPEC.__dict__, "seed": 8}))
    assert not np.array_equal(a[1][:1000], c[1][:1000])


@pytest.mark.unit
def test_chunks_are_independent_so_more_users_extend_the_same_log():
    """Chunk c draws from its own stream: the first 2800 users (whole chunks) of a longer log are the same."""
    small = events(SPEC)
    large = events(SyntheticSpec(**{**SPEC.__dict__, "n_users": 6_000}))
    head = large[0] < SPEC.n_users
    assert all(np.array_equal(x, y[head]) for x, y in zip(small, large, strict=True))
    assert max(len(np.unique(c.users)) for c in chunks(SPEC)) == SPEC.chunk_users


@pytest.mark.unit
def test_users_have_distinct_items_in_strictly_increasing_time_inside_the_window():
    users, items, times = events(SPEC)
    assert np.all(np.diff(users) >= 0) and set(np.unique(users)) == set(range(SPEC.n_users))
    counts = np.bincount(users)
    assert counts.min() >= SPEC.min_per_user and counts.max() <= SPEC.max_per_user
    assert len(np.unique(users * SPEC.n_items + items)) == len(users)  # no repeated (user, item)
    same_user = users[1:] == users[:-1]
    assert np.all(np.diff(times)[same_user] > 0)
    assert times.min() >= SPEC.start_seconds and times.max() < SPEC.end_seconds
    assert items.min() >= 0 and items.max() < SPEC.n_items


@pytest.mark.unit
def test_activity_and_popularity_are_long_tailed():
    users, items, _ = events(SyntheticSpec(n_users=20_000, n_items=5_000, seed=1, chunk_users=5_000))
    counts = np.bincount(users)
    # Pareto(alpha=2) from 5, capped at 200: mean 5 * 2 = 10 minus the cap's small share; a heavy tail
    assert 8.5 < counts.mean() < 10.5 and np.median(counts) < counts.mean()
    assert np.quantile(counts, 0.99) >= 4 * np.median(counts)
    popularity = np.sort(np.bincount(items, minlength=5_000))[::-1]
    top = popularity[:50].sum() / popularity.sum()
    # Zipf(1) over 5000 items: the top 1% of items take H(50) / H(5000) ~ 0.50 of the draws; without
    # duplicates per user a little less
    assert 0.35 < top < 0.55
    assert popularity[0] > 50 * np.median(popularity)


@pytest.mark.unit
def test_in_memory_snapshot_has_leave_one_out_splits():
    data = interaction_data(SPEC)
    assert (data.n_users, data.n_items) == (SPEC.n_users, SPEC.n_items) and len(data) == len(events(SPEC)[0])
    for split in (InteractionData.VALID, InteractionData.TEST):
        users, _ = data.pairs(split)
        assert np.array_equal(users, np.arange(SPEC.n_users))  # every user has >= 3 events: one each
    last = np.r_[data.users[1:] != data.users[:-1], True]  # each user's last event in time order
    assert np.all(data.splits[last] == InteractionData.TEST)


@pytest.mark.unit
def test_published_snapshots_keep_stable_ids_and_append_new_ones(tmp_path):
    """The first 700 users, then all 2800: known raw ids keep their index, new ones are appended."""
    lake = schema.Lake.at(tmp_path / "lake")
    first = interaction_data(SyntheticSpec(**{**SPEC.__dict__, "n_users": 700}))
    full = interaction_data(SPEC)
    publish_snapshot(lake, "2026-11-01", first)
    publish_snapshot(lake, "2026-11-02", full)
    day1, day2 = (
        InteractionData.load(lake.interactions("2026-11-01")),
        InteractionData.load(lake.interactions("2026-11-02")),
    )
    users = read_id_map(lake.id_map(schema.USERS)).column(schema.RAW_ID).to_pylist()
    items = read_id_map(lake.id_map(schema.ITEMS)).column(schema.RAW_ID).to_pylist()
    assert (day1.n_users, day2.n_users) == (700, SPEC.n_users) and users[:3] == ["u0", "u1", "u2"]
    assert day2.n_items == len(items) == len(np.unique(full.items))  # only items with an interaction
    number = np.array([int(raw[1:]) for raw in items])  # item index -> generated number
    assert np.array_equal(number[day2.items], full.items) and np.array_equal(day2.splits, full.splits)
    assert np.array_equal(number[day1.items], first.items)  # day 1's indices mean the same items on day 2
    assert np.all(np.diff(number[day1.n_items :]) > 0) and len(set(number)) == len(number)


@pytest.mark.unit
def test_written_logs_hold_every_event_with_raw_ids(tmp_path):
    users, items, times = events(SPEC)
    for fmt in ("parquet", "csv"):
        path = tmp_path / f"events.{fmt}"
        counts = write_events(SPEC, path, fmt)
        table = pq.read_table(path) if fmt == "parquet" else pcsv.read_csv(path)
        assert counts["events"] == table.num_rows == len(users) and counts["users"] == SPEC.n_users
        assert table.column_names == ["user_id", "item_id", "timestamp"]
        assert table.column("user_id").to_pylist()[:3] == [f"u{u}" for u in users[:3]]
        assert table.column("item_id").to_pylist()[-1] == f"i{items[-1]}"
        assert np.array_equal(table.column("timestamp").to_numpy(), times)


@pytest.mark.unit
def test_bad_specs_are_refused():
    with pytest.raises(ConfigError, match="max_per_user < n_items"):
        SyntheticSpec(n_users=10, n_items=10, max_per_user=10)
    with pytest.raises(ConfigError, match="activity_alpha > 0"):
        SyntheticSpec(n_users=10, n_items=100, max_per_user=50, activity_alpha=0)
    with pytest.raises(ConfigError, match="format must be one of"):
        write_events(SPEC, "x.json", "json")


@pytest.mark.spark
@pytest.mark.slow
def test_the_etl_loader_reads_the_written_log_without_quarantine(spark, tmp_path):
    from tokenrec.data.loaders import load_source

    small = SyntheticSpec(n_users=200, n_items=300, chunk_users=64, seed=2)
    path = tmp_path / "events.parquet"
    written = write_events(small, path)
    source = SourceConfig(**source_layer(path)["source"])
    parsed = load_source(spark, source, str(path))
    assert parsed.records.where(f"{schema.REASON} is not null").count() == 0
    rows = parsed.events.orderBy(schema.SOURCE_FILE, schema.LINE_NO).collect()
    assert len(rows) == written["events"]
    first = rows[0]
    users, items, times = events(small)
    assert (first[schema.USER_ID], first[schema.ITEM_ID]) == (f"u{users[0]}", f"i{items[0]}")
    assert first[schema.EVENT_TS] == dt.datetime.fromtimestamp(int(times[0]), dt.UTC).replace(tzinfo=None)

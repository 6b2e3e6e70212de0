"""The Spark ETL end to end on small hand-computed inputs, and on the real data sets."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tokenrec import schema
from tokenrec.config import load_config
from tokenrec.data.datasets import preset
from tokenrec.data.etl import run_etl
from tokenrec.data.id_maps import id_map_lock, read_id_map
from tokenrec.errors import ConfigError, InputError, LockTimeout
from tokenrec.gates.expectations import validate_interactions
from tokenrec.storage import is_published, read_manifest, staged_version

pytestmark = pytest.mark.spark

DAY1, DAY2 = "2026-01-01", "2026-01-02"
REPO = Path(__file__).resolve().parents[2]

# k = 2. Round 1 removes item q (1 event); round 2 user C (left with w only); round 3 item w (left with D only).
# A's second x is a duplicate (first occurrence, t=1, kept).
DAY1_EVENTS = """u,i,t
A,x,1
A,y,2
A,z,3
A,x,4
B,x,1
B,y,5
C,w,2
C,q,3
D,w,1
D,y,2
D,z,4
"""
# Day 2 lands a new user E and a new item v (seen by E and A).
DAY2_EVENTS = """u,i,t
E,x,10
E,y,11
E,v,12
A,v,13
"""


def _landing(tmp_path):
    root = tmp_path / "raw"
    for day, text in ((DAY1, DAY1_EVENTS), (DAY2, DAY2_EVENTS)):
        (root / f"dt={day}").mkdir(parents=True)
        (root / f"dt={day}" / "events.csv").write_text(text)
    return root


def _cfg(home, source_path, *overrides):
    return load_config(overrides=[
        f"paths.home={home}", "source.dataset=tiny", "source.format=csv", f"source.path={source_path}",
        "source.user_col=u", "source.item_col=i", "source.time_col=t", "etl.kcore=2",
        "spark.shuffle_partitions=2", *overrides,
    ])


def _rows(snapshot):
    table = pq.read_table(snapshot, schema=schema.INTERACTIONS)
    ts = [int(t.timestamp()) for t in table.column(schema.EVENT_TS).to_pylist()]
    cols = [table.column(c).to_pylist() for c in (schema.USER_IDX, schema.ITEM_IDX)]
    return sorted(zip(cols[0], cols[1], ts, table.column(schema.SPLIT).to_pylist(), strict=True))


def _id_map(cfg, kind):
    table = read_id_map(schema.Lake.at(cfg.paths.lake).id_map(kind))
    return dict(zip(table.column(schema.RAW_ID).to_pylist(), table.column(schema.IDX).to_pylist(), strict=True))


def test_kcore_dedupe_ids_and_split_match_hand_computation(spark, home, tmp_path):
    cfg = _cfg(home, _landing(tmp_path))
    result = run_etl(spark, cfg, DAY1)
    users, items = _id_map(cfg, "users"), _id_map(cfg, "items")
    assert users == {"A": 0, "B": 1, "D": 2}  # by first event time (after k-core), then raw id
    assert items == {"x": 0, "y": 1, "z": 2}
    a, b, d = users["A"], users["B"], users["D"]
    x, y, z = items["x"], items["y"], items["z"]
    assert _rows(result.snapshot) == sorted([
        (a, x, 1, "train"), (a, y, 2, "valid"), (a, z, 3, "test"),  # 3 events: last test, second-to-last valid
        (b, x, 1, "train"), (b, y, 5, "train"),  # fewer than 3 events: all train
        (d, y, 2, "train"), (d, z, 4, "train"),
    ])
    m = result.manifest
    assert (m["raw_rows"], m["valid_rows"], m["quarantined_rows"]) == (11, 11, 0)
    assert m["duplicates_dropped"] == 1 and m["kcore_removed"] == 3 and m["kcore_rounds"] == 4
    assert (m["rows"], m["users"], m["items"], m["n_users"], m["n_items"]) == (7, 3, 3, 3, 3)
    assert read_manifest(result.snapshot)["rows"] == 7
    assert (result.snapshot / "_config.yaml").is_file()
    # staged for the validation gate, not yet visible to readers of the table
    partition = schema.Lake.at(cfg.paths.lake).interactions(DAY1)
    assert not result.published and staged_version(partition) == result.snapshot.resolve() and not is_published(partition)
    assert run_etl(spark, cfg, DAY1, publish=True).published and is_published(partition)


def test_id_maps_are_stable_across_days_and_reruns_are_idempotent(spark, home, tmp_path):
    cfg = _cfg(home, _landing(tmp_path))
    day1 = run_etl(spark, cfg, DAY1)
    rows1 = _rows(day1.snapshot)
    users1, items1 = _id_map(cfg, "users"), _id_map(cfg, "items")

    day2 = run_etl(spark, cfg, DAY2)
    users2, items2 = _id_map(cfg, "users"), _id_map(cfg, "items")
    assert {k: users2[k] for k in users1} == users1  # existing ids keep their index
    assert {k: items2[k] for k in items1} == items1
    assert users2["E"] == 3 and items2["v"] == 3  # new ids appended
    assert day2.manifest["new_users"] == 1 and day2.manifest["new_items"] == 1
    day2_files = {p.name: p.read_bytes() for p in day2.snapshot.iterdir()}
    map_files = sorted(p.name for p in schema.Lake.at(cfg.paths.lake).id_map("users").iterdir())

    again = run_etl(spark, cfg, DAY1)  # rerun of an earlier date
    assert _rows(again.snapshot) == rows1
    assert {p.name: p.read_bytes() for p in day2.snapshot.iterdir()} == day2_files  # other date untouched
    assert sorted(p.name for p in schema.Lake.at(cfg.paths.lake).id_map("users").iterdir()) == map_files
    assert _id_map(cfg, "users") == users2


def test_rating_threshold_and_global_time_split(spark, home, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("u,i,t,r\n" + "".join(f"{u},{i},{10 * i + u},{1 + (u + i) % 5}\n" for u in range(4) for i in range(6)))
    cfg = _cfg(home, path, "source.rating_col=r", "etl.rating_threshold=3", "etl.kcore=0",
               "etl.split=global_time", "etl.valid_quantile=0.5", "etl.test_quantile=0.75")
    result = run_etl(spark, cfg, DAY1)
    rows = _rows(result.snapshot)
    assert len(rows) == sum(1 + (u + i) % 5 >= 3 for u in range(4) for i in range(6))
    by_split = {s: [t for *_, t2, s2 in rows for t in [t2] if s2 == s] for s in schema.SPLITS}
    assert max(by_split["train"]) < min(by_split["valid"]) <= max(by_split["valid"]) < min(by_split["test"])


def test_mostly_malformed_input_publishes_nothing(spark, home, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(DAY1_EVENTS)
    cfg = _cfg(home, good)
    first = run_etl(spark, cfg, DAY1)
    before = {p.name: p.read_bytes() for p in first.snapshot.iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("u,i,t\n" + "".join(f"A,{i},2026-01-0{i % 9 + 1}\n" for i in range(20)))  # ISO times, unit s
    with pytest.raises(InputError) as err:
        run_etl(spark, _cfg(home, bad), DAY1)
    message = str(err.value)
    assert str(bad) in message and "field 't'" in message and "20 of 20 records are malformed" in message
    assert {p.name: p.read_bytes() for p in first.snapshot.iterdir()} == before


def test_threshold_without_ratings_is_a_config_error(spark, home, tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 2 3\n")
    cfg = load_config(overrides=[f"paths.home={home}", "source.format=user_sequence", f"source.path={path}",
                                 "etl.rating_threshold=4"])
    with pytest.raises(ConfigError, match="has no rating column"):
        run_etl(spark, cfg, DAY1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--ds", "2026-02-30"], "--ds must be a date as YYYY-MM-DD"),
        (["--ds", DAY1, "--set", "etl.kcroe=2"], "unknown config key 'etl.kcroe'"),
        (["--ds", DAY1, "--set", "source.path=/no/such/file.csv"], "/no/such/file.csv: the source path does not exist"),
    ],
)
def test_cli_errors_are_one_line(home, args, match):
    proc = subprocess.run([sys.executable, "-m", "tokenrec.cli", "etl", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tokenrec etl: error:")]
    assert len(lines) == 1 and match in lines[0], proc.stderr


@pytest.mark.slow
def test_movielens_100k(spark, home):
    """943 users, 1,349 items after the 5-core filter, 99,287 interactions (see docs/DATA.md)."""
    cfg = load_config(overrides=[f"paths.home={home}"], base=preset("ml100k"))
    m = run_etl(spark, cfg, "2026-11-27").manifest
    assert (m["raw_rows"], m["quarantined_rows"]) == (100_000, 0)
    assert (m["users"], m["items"], m["rows"]) == (943, 1_349, 99_287)
    assert m["split_counts"] == {"train": 99_287 - 2 * 943, "valid": 943, "test": 943}


@pytest.mark.slow
def test_lastfm(spark, home, shared_data):
    cfg = load_config(overrides=[f"paths.home={home}", f"source.path={shared_data / 'lastfm' / 'user_sequence.txt'}"],
                      base=preset("lastfm"))
    m = run_etl(spark, cfg, "2026-11-27").manifest
    assert (m["users"], m["items"], m["rows"], m["duplicates_dropped"], m["kcore_removed"]) == (1_090, 3_646, 52_551, 0, 0)


# ------------------------------------------------------------------------------------ two ETLs at once
# Issue 18 item 2: the retrain's and the nightly's ETL of different dates share the ID maps. Airflow keeps them
# apart with the one-slot pool ``tokenrec_etl``; the ETL itself holds an exclusive lock on ``id_maps/.lock``
# while it reads and extends the maps, so runs outside Airflow (``tokenrec etl``, a backfill by hand) cannot
# hand out one index twice either. Two real ``jobs.etl`` processes of different dates are started while the
# test holds the lock, so both are certainly waiting on it when it is released and race for it.

SOURCE_ARGS = [
    "--set=source.dataset=tiny", "--set=source.format=csv", "--set=source.user_col=u", "--set=source.item_col=i",
    "--set=source.time_col=t", "--set=etl.kcore=2", "--profile=tiny",  # tiny: local[1] and a short-lived JVM's flags
]  # fmt: skip


def _map(lake: schema.Lake, kind: str) -> dict[str, int]:
    table = read_id_map(lake.id_map(kind))  # raises when the map is not a bijection onto 0..n-1
    return dict(zip(table.column(schema.RAW_ID).to_pylist(), table.column(schema.IDX).to_pylist(), strict=True))


def _wait_for(logs: list[Path], text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(text in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "the ETLs never reached the ID map lock:\n" + "\n".join(
            log.read_text()[-2000:] for log in logs
        )
        time.sleep(0.5)


@pytest.mark.slow  # two ETL processes, each starting its own Spark
def test_two_concurrent_etls_of_different_dates_leave_consistent_maps_and_valid_snapshots(spark, home, tmp_path):
    raw = _landing(tmp_path)
    lake = schema.Lake.at(home / "lake")
    env = {**os.environ, "TOKENREC_HOME": str(home)}
    logs = [tmp_path / f"etl-{day}.log" for day in (DAY1, DAY2)]
    with id_map_lock(lake.id_map(schema.USERS).parent, timeout_s=5, holder="the test"):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "jobs.etl", f"--ds={day}", f"--set=source.path={raw}", *SOURCE_ARGS],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
            )
            for day, log in zip((DAY1, DAY2), logs, strict=True)
        ]  # fmt: skip
        _wait_for(logs, "waiting for the lock", timeout_s=300)
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]

    users, items = _map(lake, schema.USERS), _map(lake, schema.ITEMS)
    assert set(users) == {"A", "B", "D", "E"} and set(items) == {"x", "y", "z", "v"}  # each raw id exactly once
    for day in (DAY1, DAY2):  # both snapshots staged, with indices the shared maps know
        version = staged_version(lake.interactions(day))
        assert version is not None, day
        table = pq.read_table(version, schema=schema.INTERACTIONS)
        assert set(table.column(schema.USER_IDX).to_pylist()) <= set(users.values())
        assert set(table.column(schema.ITEM_IDX).to_pylist()) <= set(items.values())
    day1_users = set(pq.read_table(staged_version(lake.interactions(DAY1))).column(schema.USER_IDX).to_pylist())
    assert day1_users == {users["A"], users["B"], users["D"]}  # E lands on day 2 only
    cfg = _cfg(home, raw)
    for day in (DAY1, DAY2):  # and both pass the Great Expectations gate, which publishes them
        validate_interactions(spark, cfg, day)
        assert (lake.interactions(day) / schema.MANIFEST_FILE).is_file()


def test_an_etl_that_cannot_get_the_lock_fails_naming_it_and_changes_nothing(spark, home, tmp_path):
    cfg = _cfg(home, _landing(tmp_path), "etl.id_map_lock_timeout_s=1")
    lake = schema.Lake.at(cfg.paths.lake)
    maps_root = lake.id_map(schema.USERS).parent
    held = r"id_maps/\.lock: still locked by the ETL of 2026-01-09 \(pid \d+\)"
    with id_map_lock(maps_root, timeout_s=5, holder="the ETL of 2026-01-09"), pytest.raises(LockTimeout, match=held):
        run_etl(spark, cfg, DAY1)
    assert read_id_map(lake.id_map(schema.USERS)).num_rows == 0
    assert staged_version(lake.interactions(DAY1)) is None
    run_etl(spark, cfg, DAY1)  # once the lock is free the same ETL goes through
    assert read_id_map(lake.id_map(schema.USERS)).num_rows == 3

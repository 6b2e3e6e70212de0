"""Every analyst query of sql/analytics/ on a small hand-built lake, against hand-computed values.

The lake is published the way the pipeline publishes it (tokenrec.storage.publish_partition, the Arrow schemas
of tokenrec.schema, ID maps through tokenrec.data.id_maps.append_ids):

    items  i1 i2 i3 i4 i6 first seen D1 (idx 0..4), i5 first seen D2 (idx 5)
    users  u1 u2 first seen D1 (idx 0, 1), u3 u4 first seen D2 (idx 2, 3)

    recommendations  D1: u1 = i1 i2 i3      u2 = i3 i4 i2
                     D2: u1 = i1 i4 i5      u2 = i3 i2 i4      u3 = i1 i2 i5
    interactions D2  train counts: i1 3, i2 2, i3 2, i4 1, i5 0, i6 0 (u4 is not in the snapshot)
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenrec import schema
from tokenrec.data.id_maps import append_ids, read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.reporting import analytics, facts
from tokenrec.storage import publish_partition

pytestmark = pytest.mark.spark

D1, D2 = "2026-11-26", "2026-11-27"
DAY1, DAY2 = dt.date.fromisoformat(D1), dt.date.fromisoformat(D2)
ITEMS = {D1: ["i1", "i2", "i3", "i4", "i6"], D2: ["i5"]}
USERS = {D1: ["u1", "u2"], D2: ["u3", "u4"]}
LISTS = {
    D1: {"u1": ["i1", "i2", "i3"], "u2": ["i3", "i4", "i2"]},
    D2: {"u1": ["i1", "i4", "i5"], "u2": ["i3", "i2", "i4"], "u3": ["i1", "i2", "i5"]},
}
INTERACTIONS_D2 = [  # (user, item, split), in time order per user
    ("u1", "i1", "train"),
    ("u1", "i2", "train"),
    ("u1", "i3", "train"),
    ("u1", "i4", "valid"),
    ("u1", "i5", "test"),
    ("u2", "i1", "train"),
    ("u2", "i3", "train"),
    ("u2", "i4", "train"),
    ("u2", "i6", "valid"),
    ("u2", "i5", "test"),
    ("u3", "i1", "train"),
    ("u3", "i2", "train"),
    ("u3", "i5", "valid"),
]


def _publish_table(partition, table: pa.Table) -> None:
    publish_partition(
        partition,
        lambda folder: (folder.mkdir(), pq.write_table(table, folder / "part-0.parquet")),
        {"rows": table.num_rows},
    )


def _id_map_idx(kind: dict[str, list[str]]) -> dict[str, int]:
    names = [name for day in (D1, D2) for name in kind[day]]
    return {name: i for i, name in enumerate(names)}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> schema.Lake:
    lake = schema.Lake.at(tmp_path_factory.mktemp("analytics") / "lake")
    for kind, ids in ((schema.USERS, USERS), (schema.ITEMS, ITEMS)):
        idx = _id_map_idx(ids)
        for day in (D1, D2):
            append_ids(
                lake.id_map(kind),
                pa.table(
                    {
                        schema.RAW_ID: ids[day],
                        schema.IDX: pa.array([idx[n] for n in ids[day]], pa.int32()),
                        schema.FIRST_SEEN: pa.array(
                            [dt.date.fromisoformat(day)] * len(ids[day]), pa.date32()
                        ),
                    },
                    schema=schema.ID_MAP,
                ),
                day,
            )
    for day, lists in LISTS.items():
        generated = dt.datetime.fromisoformat(f"{day}T03:00:00+00:00")
        rows = [(u, r + 1, item, 1.0 - 0.1 * r) for u, items in lists.items() for r, item in enumerate(items)]
        table = pa.table(
            {
                schema.USER_ID: [r[0] for r in rows],
                schema.RANK: pa.array([r[1] for r in rows], pa.int16()),
                schema.ITEM_ID: [r[2] for r in rows],
                schema.SCORE: pa.array([r[3] for r in rows], pa.float32()),
                schema.MODEL_NAME: ["tokenrec"] * len(rows),
                schema.MODEL_VERSION: ["3"] * len(rows),
                schema.GENERATED_AT: pa.array([generated] * len(rows), schema.UTC_TS),
            },
            schema=schema.RECOMMENDATIONS,
        )
        _publish_table(lake.recommendations(day), table)
    users, items = _id_map_idx(USERS), _id_map_idx(ITEMS)
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    _publish_table(
        lake.interactions(D2),
        pa.table(
            {
                schema.USER_IDX: pa.array([users[u] for u, _, _ in INTERACTIONS_D2], pa.int32()),
                schema.ITEM_IDX: pa.array([items[i] for _, i, _ in INTERACTIONS_D2], pa.int32()),
                schema.EVENT_TS: pa.array(
                    [start + dt.timedelta(hours=n) for n in range(len(INTERACTIONS_D2))], schema.UTC_TS
                ),
                schema.SPLIT: [s for _, _, s in INTERACTIONS_D2],
            },
            schema=schema.INTERACTIONS,
        ),
    )
    return lake


@pytest.fixture(scope="module")
def views(spark, lake):
    return analytics.register_lake_views(spark, lake)


def _rows(spark, name: str, ds: str, **params) -> list[dict]:
    df = analytics.run_query(spark, name, ds, {k: str(v) for k, v in params.items()})
    assert df.columns == list(analytics.get_query(name).columns), f"{name}: header OUTPUT COLUMNS != result"
    return [row.asDict() for row in df.collect()]


def test_views_read_published_partitions_through_links(spark, lake, views):
    assert all(views.values()), views  # all four tables found
    assert (lake.recommendations(D1)).is_symlink()
    days = spark.sql("select dt, count(*) as n from recommendations group by dt order by dt").collect()
    assert [(r.dt, r.n) for r in days] == [(DAY1, 6), (DAY2, 9)]
    assert spark.table("interactions").schema["snapshot_date"].dataType.typeName() == "date"
    assert spark.table("id_map_items").count() == 6


def test_user_top_k(spark, views):
    rows = _rows(spark, "fct_user_top_k", D2, user_id="u1", k=2)
    assert [(r["rank"], r["item_id"], r["item_first_seen"]) for r in rows] == [
        (1, "i1", DAY1),
        (2, "i4", DAY1),
    ]
    assert rows[0]["dt"] == DAY2 and rows[0]["model_version"] == "3"
    assert rows[0]["score"] == pytest.approx(1.0)
    new_user = _rows(spark, "fct_user_top_k", D2, user_id="u3")  # default k = 20: the whole list
    assert [(r["item_id"], r["item_first_seen"]) for r in new_user] == [
        ("i1", DAY1),
        ("i2", DAY1),
        ("i5", DAY2),
    ]
    assert _rows(spark, "fct_user_top_k", D2, user_id="nobody") == []


def test_item_exposure(spark, views):
    rows = {r["item_id"]: r for r in _rows(spark, "fct_item_exposure", D2)}
    assert list(rows) == ["i1", "i2", "i4", "i5", "i3"]  # by users exposed, then item id; i6 never shown
    got = {k: (r["n_users_exposed"], r["mean_rank"], r["best_rank"], r["n_top1"]) for k, r in rows.items()}
    assert got == {
        "i1": (2, 1.0, 1, 2),
        "i2": (2, 2.0, 2, 0),
        "i4": (2, 2.5, 2, 0),
        "i5": (2, 3.0, 3, 0),
        "i3": (1, 1.0, 1, 1),
    }
    assert rows["i1"]["exposure_share"] == pytest.approx(2 / 3)
    assert rows["i3"]["exposure_share"] == pytest.approx(1 / 3)
    assert [k for k, r in rows.items() if r["is_new_item"]] == ["i5"]


def test_catalog_coverage_daily(spark, views):
    rows = _rows(spark, "fct_catalog_coverage_daily", D2)
    got = [
        (r["dt"], r["n_users"], r["n_recommendations"], r["n_items_recommended"], r["catalog_size"])
        for r in rows
    ]
    assert got == [(DAY1, 2, 6, 4, 5), (DAY2, 3, 9, 5, 6)]
    assert [r["catalog_coverage"] for r in rows] == pytest.approx([4 / 5, 5 / 6])
    assert [r["top_item_exposure_share"] for r in rows] == pytest.approx([2 / 2, 2 / 3])
    assert [r["dt"] for r in _rows(spark, "fct_catalog_coverage_daily", D2, days=1)] == [DAY2]


def test_user_list_churn(spark, views):
    rows = {r["user_id"]: r for r in _rows(spark, "fct_user_list_churn", D2)}
    assert {r["previous_dt"] for r in rows.values()} == {DAY1}
    got = {u: (r["n_today"], r["n_previous"], r["n_overlap"], r["has_previous"]) for u, r in rows.items()}
    assert got == {"u1": (3, 3, 1, True), "u2": (3, 3, 3, True), "u3": (3, 0, 0, False)}
    assert rows["u1"]["jaccard"] == pytest.approx(1 / 5)  # {i1} / {i1 i2 i3 i4 i5}
    assert rows["u1"]["overlap_share"] == pytest.approx(1 / 3)
    assert rows["u2"]["jaccard"] == pytest.approx(1.0)  # same items in another order
    assert rows["u3"]["jaccard"] is None and rows["u3"]["overlap_share"] is None
    top2 = {r["user_id"]: r["jaccard"] for r in _rows(spark, "fct_user_list_churn", D2, k=2)}
    assert top2["u1"] == pytest.approx(1 / 3) and top2["u2"] == pytest.approx(
        1 / 3
    )  # {i1 i4}/{i1 i2}, {i3 i2}/{i3 i4}
    first_day = _rows(spark, "fct_user_list_churn", D1)
    assert [(r["user_id"], r["previous_dt"], r["has_previous"]) for r in first_day] == [
        ("u1", None, False),
        ("u2", None, False),
    ]


def test_popular_share(spark, views):
    (top2,) = _rows(spark, "fct_popular_share", D2, top_n=2)  # popular: i1 (3), i2 (2; beats i3 on the index)
    assert (top2["snapshot_date"], top2["top_n"], top2["n_users"], top2["n_recommendations"]) == (
        DAY2,
        2,
        3,
        9,
    )
    assert (top2["n_popular_recommendations"], top2["n_popular_items_recommended"]) == (4, 2)
    assert top2["popular_share"] == pytest.approx(4 / 9)
    (top3,) = _rows(spark, "fct_popular_share", D2, top_n=3)  # + i3
    assert top3["popular_share"] == pytest.approx(5 / 9) and top3["n_popular_items_recommended"] == 3
    (before,) = _rows(spark, "fct_popular_share", D1)  # no snapshot on or before D1: nothing is popular
    assert before["snapshot_date"] is None and before["n_recommendations"] == 6
    assert before["n_popular_recommendations"] == 0


def test_new_user_cohort(spark, views):
    (d2,) = _rows(spark, "fct_new_user_cohort", D2)  # u3 (in snapshot, recommended), u4 (neither)
    assert (d2["first_seen"], d2["n_new_users"], d2["n_in_snapshot"], d2["n_recommended"]) == (DAY2, 2, 1, 1)
    assert d2["recommended_share"] == pytest.approx(0.5) and d2["n_recommended_within"] == 1
    (d1,) = _rows(spark, "fct_new_user_cohort", D1)  # u1, u2: recommended on D1, no D1 snapshot
    assert (d1["n_new_users"], d1["n_in_snapshot"], d1["n_recommended"], d1["n_recommended_within"]) == (
        2,
        0,
        2,
        2,
    )
    (empty,) = _rows(spark, "fct_new_user_cohort", "2026-11-28")
    assert empty["n_new_users"] == 0 and empty["recommended_share"] is None


def test_every_query_is_tested_and_documented():
    names = {q.name for q in analytics.list_queries()}
    assert names == {
        "fct_user_top_k",
        "fct_item_exposure",
        "fct_catalog_coverage_daily",
        "fct_user_list_churn",
        "fct_popular_share",
        "fct_new_user_cohort",
    }
    docs = (analytics.sql_root().parent / "docs" / "ANALYTICS.md").read_text()
    for query in analytics.list_queries():
        text = (analytics.analytics_dir() / f"{query.name}.sql").read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        assert code == code.lower(), f"{query.name}: dbt style is lowercase"
        assert "select * from final" in text and query.columns, query.name
        assert f"`{query.name}`" in docs, f"docs/ANALYTICS.md does not document {query.name}"
        for column in query.columns:
            assert f"`{column}`" in docs, f"docs/ANALYTICS.md misses column {column} of {query.name}"


def test_cli_main_runs_a_query_and_reports_errors(spark, views, lake, capsys, home):
    config = ["--set", f"paths.lake={lake.root}", "--set", "spark.shuffle_partitions=2"]
    assert (
        analytics.main(["fct_popular_share", "--ds", D2, "--param", "top_n=2", "--format", "json", *config])
        == 0
    )
    (row,) = json.loads(capsys.readouterr().out)
    assert row["popular_share"] == pytest.approx(4 / 9) and row["snapshot_date"] == D2
    assert (
        analytics.main(
            [
                "fct_user_top_k",
                "--ds",
                D2,
                "--param",
                "user_id=u1",
                "--format",
                "csv",
                "--limit",
                "2",
                *config,
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dt,user_id,rank,item_id,score") and len(lines) == 3
    assert lines[2].startswith(f"{D2},u1,2,i4,0.9")
    assert analytics.main(["fct_item_exposure", "--ds", D2, *config]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["dt", "item_id", "n_users_exposed"] and table[-1] == "(5 rows)"
    assert spark.sparkContext._jsc is not None  # main() left the shared session running

    assert analytics.main(["--list"]) == 0
    assert "fct_user_list_churn" in capsys.readouterr().out
    assert analytics.main(["fct_user_top_k", "--ds", D2]) == 2  # user_id has no default
    assert "--param user_id=<string>" in capsys.readouterr().err
    assert analytics.main(["no_such_query", "--ds", D2]) == 2
    assert "available: fct_catalog_coverage_daily" in capsys.readouterr().err
    assert analytics.main(["fct_item_exposure", "--ds", "27.11.2026"]) == 2
    assert analytics.main(["fct_item_exposure", "--ds", D2, "--param", "k=3"]) == 2  # not a parameter of it


def test_the_nightly_report_counts_as_the_queries_do(spark, views, lake):
    """tokenrec.reporting.facts's coverage and popular share are fct_catalog_coverage_daily's and fct_popular_share's."""
    users, items = _id_map_idx(USERS), _id_map_idx(ITEMS)
    snapshot = pq.read_table(lake.interactions(D2), schema=schema.INTERACTIONS)
    data = InteractionData.from_table(snapshot, len(users), len(items))
    stats = facts.output_stats(
        pq.read_table(lake.recommendations(D2), schema=schema.RECOMMENDATIONS),
        read_id_map(lake.id_map(schema.ITEMS)),
        data,
        D2,
    )
    (coverage,) = [r for r in _rows(spark, "fct_catalog_coverage_daily", D2) if r["dt"] == DAY2]
    assert (stats.catalog_size, stats.items_recommended) == (coverage["catalog_size"], 5)
    assert stats.catalog_coverage == pytest.approx(coverage["catalog_coverage"])
    assert stats.top_item_exposure_share == pytest.approx(coverage["top_item_exposure_share"])
    assert stats.popular_items == 1  # ceil(10 % of the 6 catalog items): i1, 3 training interactions
    (popular,) = _rows(spark, "fct_popular_share", D2, top_n=stats.popular_items)
    assert stats.popular_share == pytest.approx(popular["popular_share"]) == pytest.approx(2 / 9)
    assert stats.decile_rec_share[0] == pytest.approx(stats.popular_share)
    assert stats.popular_train_share == pytest.approx(3 / 8)  # i1's 3 of the 8 training interactions


DUCKDB_PARAMS = {"fct_user_top_k": {"user_id": "u1"}}


@pytest.mark.skipif(importlib.util.find_spec("duckdb") is None, reason="duckdb is not installed")
def test_queries_run_unchanged_on_duckdb(spark, lake, views):
    """The same files with :name -> $name give the same rows in DuckDB (docs/ANALYTICS.md's recipe)."""
    import duckdb

    con = duckdb.connect()
    for view, pattern in (
        ("recommendations", "recommendations/dt=*/*.parquet"),
        ("interactions", "interactions/snapshot_date=*/*.parquet"),
        ("id_map_users", "id_maps/users/*.parquet"),
        ("id_map_items", "id_maps/items/*.parquet"),
    ):
        con.execute(
            f"create view {view} as select * from read_parquet('{lake.root / pattern}', "
            f"hive_partitioning = {'=' in pattern})"
        )
    for query in analytics.list_queries():
        given = DUCKDB_PARAMS.get(query.name, {})
        text = re.sub(r":(\w+)", r"$\1", (analytics.analytics_dir() / f"{query.name}.sql").read_text())
        duck = con.execute(text, query.bind(D2, given)).fetchall()
        ours = [tuple(r) for r in analytics.run_query(spark, query.name, D2, given).collect()]
        keep = [i for i, c in enumerate(query.columns) if c != schema.GENERATED_AT]  # tz rendering differs
        assert len(duck) == len(ours) > 0, query.name
        for a, b in zip(duck, ours, strict=True):
            assert [a[i] for i in keep] == pytest.approx([b[i] for i in keep]), query.name


def test_missing_tables_are_empty_views(spark, lake, tmp_path):
    empty = schema.Lake.at(tmp_path / "lake")
    try:
        assert analytics.register_lake_views(spark, empty) == dict.fromkeys(
            ["recommendations", "interactions", "id_map_users", "id_map_items"], ""
        )
        (row,) = _rows(spark, "fct_popular_share", D2)
        assert row["n_recommendations"] == 0 and row["popular_share"] is None
        assert _rows(spark, "fct_item_exposure", D2) == []
    finally:
        analytics.register_lake_views(spark, lake)

"""Both DAGs end to end through Airflow (issue 7): ``airflow dags test`` of ``tokenrec_retrain`` and then
``tokenrec_nightly`` on a tiny generated data set (tests/airflow/deployment.py), with Airflow's SQLite metadata
DB, the MLflow SQLite store and the lake all in a temporary folder.

One retrain (module fixture) and a two-day nightly backfill are shared by the tests, which then show:
- every task instance succeeded, the training tasks ran in the ``gpu`` pool, a champion is registered, and each
  night publishes K rows for every active user, served by the champion's version (folded-in users included);
- R1 through Airflow: re-running the first night after the second one was published gives identical rows and
  leaves the other date untouched.

The nights that fail (no champion, corrupt input, a param carrying shell code) are in test_dags_e2e_failures.py,
on their own deployment, so that the two files run side by side.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.airflow.deployment import (
    ITEMS,
    NIGHTLY,
    NIGHTS,
    POOLS,
    RETRAIN,
    RETRAIN_DS,
    USERS,
    Deployment,
    K,
    Run,
    assert_succeeded,
    land_event_log,
    published_state,
    read_rows,
)  # fmt: skip
from tokenrec import schema
from tokenrec.storage import read_manifest, staged_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.spark]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Airflow set up, the history and the nights landed."""
    deployment = Deployment(tmp_path_factory.mktemp("airflow-e2e"))
    land_event_log(deployment.raw)
    return deployment


@pytest.fixture(scope="module")
def retrain(deployment: Deployment) -> Run:
    """``tokenrec_retrain`` once for RETRAIN_DS (the nights are landed already, later than its date)."""
    return deployment.dags_test("tokenrec_retrain", RETRAIN_DS)


@pytest.fixture(scope="module")
def backfill(deployment: Deployment, retrain: Run) -> dict[str, Run]:
    """``tokenrec_nightly`` for the consecutive NIGHTS, as a backfill runs them (oldest first)."""
    assert_succeeded(retrain, RETRAIN)
    return {ds: deployment.dags_test("tokenrec_nightly", ds) for ds in NIGHTS}


def test_retrain_runs_every_task_in_its_pool_and_registers_a_champion(deployment: Deployment, retrain: Run):
    from tokenrec.mlops import registry

    assert_succeeded(retrain, RETRAIN)
    for task, (_, tries, pool) in retrain.tasks.items():
        assert pool == POOLS.get(task, "default_pool"), task
        assert tries == 1, f"{task} needed {tries} tries"
    champion = registry.resolve_alias(deployment.config(), "champion")
    assert champion.version == 1 and champion.tags.get("tokenizer_hash")
    snapshot = read_manifest(deployment.lake.interactions(RETRAIN_DS))
    assert (snapshot["users"], snapshot["items"]) == (USERS, ITEMS)  # the later landings are not in it


def test_each_night_publishes_k_rows_for_every_active_user_from_the_champion(
    deployment: Deployment, backfill: dict[str, Run]
):
    for ds, run in backfill.items():
        assert_succeeded(run, NIGHTLY)
        partition = deployment.lake.recommendations(ds)
        assert staged_version(partition) is None
        table = read_rows(deployment.lake, ds)
        assert table.schema.equals(schema.RECOMMENDATIONS)
        rows = table.to_pandas()
        snapshot = read_manifest(deployment.lake.interactions(ds))
        assert rows.user_id.nunique() == snapshot["users"] == USERS + NIGHTS.index(ds) + 1
        assert all(ranks == list(range(1, K + 1)) for ranks in rows.groupby("user_id")["rank"].agg(list))
        assert (rows.model_name == "tokenrec").all() and (rows.model_version == "1").all()
        manifest = read_manifest(partition)
        assert (manifest["rows"], manifest["model_version"], manifest["dt"]) == (len(rows), "1", ds)
        assert manifest["fold_in"]["new_users"] >= 1 and manifest["fold_in"]["new_items"] >= 1
        assert f"u{USERS + NIGHTS.index(ds)}" in set(rows.user_id)  # the night's new user is served


def test_rerunning_an_earlier_night_gives_identical_rows_and_leaves_other_dates_alone(
    deployment: Deployment, backfill: dict[str, Run]
):
    """R1 through Airflow: a backfill of D, D+1, then D again (D+1's ETL has moved the ID maps on since D)."""
    assert [ds for ds, run in backfill.items() if run.returncode] == []
    partitions = sorted(p.name for p in deployment.lake.table(schema.RECOMMENDATIONS_TABLE).iterdir()
                        if p.is_symlink())  # fmt: skip
    assert partitions == [f"dt={ds}" for ds in NIGHTS]
    before = published_state(deployment.lake)
    first = NIGHTS[0]
    rows_before = read_rows(deployment.lake, first)
    interactions_before = pq.read_table(deployment.lake.interactions(first))

    rerun = deployment.dags_test("tokenrec_nightly", first)

    assert_succeeded(rerun, NIGHTLY)
    assert read_rows(deployment.lake, first).equals(rows_before)
    assert pq.read_table(deployment.lake.interactions(first)).equals(interactions_before)
    after = published_state(deployment.lake)
    touched = {key for key in before if after[key] != before[key]}
    assert touched <= {f"recommendations/dt={first}", f"interactions/snapshot_date={first}"}
    assert set(after) == set(before)

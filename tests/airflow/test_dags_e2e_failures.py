"""Nights that fail, end to end through Airflow, on a deployment that never retrained (tests/airflow/deployment.py):

- the first nightly before any retrain: the ETL and the gate publish the snapshot, then ``batch_inference`` fails
  on its first try, saying that there is no champion and what to do;
- R2 through Airflow: a night whose landed events carry an exporter's sentinel time (1900-01-01) passes the ETL
  (the values parse) but fails at ``validate_interactions``, at once and without retries; nothing downstream
  runs, every published partition and the ID maps are byte-for-byte the same;
- issue 18 item 1: a trigger-form value is never shell code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.airflow.deployment import (
    CORRUPT_DS,
    NIGHTLY,
    RETRAIN_DS,
    Deployment,
    Run,
    land_corrupt_night,
    land_event_log,
    published_state,
)  # fmt: skip
from tokenrec.storage import read_manifest, staged_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.spark]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Airflow set up and the event log landed; no model was ever registered."""
    deployment = Deployment(tmp_path_factory.mktemp("airflow-e2e-failures"))
    land_event_log(deployment.raw)
    return deployment


@pytest.fixture(scope="module")
def first_night(deployment: Deployment) -> Run:
    """``tokenrec_nightly`` for RETRAIN_DS before any ``tokenrec_retrain`` ran."""
    return deployment.dags_test("tokenrec_nightly", RETRAIN_DS)


def test_a_night_without_a_champion_fails_fast_at_batch_inference(deployment: Deployment, first_night: Run):
    assert first_night.returncode != 0
    assert first_night.states()["etl"] == first_night.states()["validate_interactions"] == "success"
    assert first_night.tasks["batch_inference"][:2] == (
        "failed",
        1,
    )  # at once: retrying cannot make a champion
    assert (
        first_night.states()["validate_recommendations"]
        == first_night.states()["publish"]
        == "upstream_failed"
    )
    message = next(
        line for line in first_night.output.splitlines() if "tokenrec batch-inference: error:" in line
    )
    assert "'tokenrec' has no version with alias 'champion'" in message
    assert "run the retrain DAG" in message
    assert (deployment.lake.interactions(RETRAIN_DS) / "_manifest.json").is_file()  # the gate published it
    assert not deployment.lake.recommendations(RETRAIN_DS).exists()
    assert staged_version(deployment.lake.recommendations(RETRAIN_DS)) is None


def test_a_night_with_corrupt_input_fails_at_validate_interactions_and_publishes_nothing(
    deployment: Deployment, first_night: Run
):
    """R2 through Airflow: the ETL parses the sentinel times, the gate refuses them, nothing else moves."""
    assert first_night.states()["validate_interactions"] == "success"
    before = published_state(deployment.lake)
    assert f"interactions/snapshot_date={RETRAIN_DS}" in before
    id_maps = {p: p.read_bytes() for p in sorted(deployment.lake.table("id_maps").rglob("*")) if p.is_file()}
    bad_rows = land_corrupt_night(deployment.raw, CORRUPT_DS)

    run = deployment.dags_test("tokenrec_nightly", CORRUPT_DS)

    assert run.returncode != 0
    assert run.tasks["etl"][0] == "success"
    assert run.tasks["validate_interactions"][:2] == ("failed", 1)  # at once: a failed gate is not retried
    assert {task: run.tasks[task][0] for task in NIGHTLY[2:]} == dict.fromkeys(NIGHTLY[2:], "upstream_failed")
    message = next(
        line for line in run.output.splitlines() if "tokenrec validate-interactions: error:" in line
    )
    assert "table interactions" in message and f"snapshot_date={CORRUPT_DS}" in message
    assert "column=event_ts, min_value=1970-01-01" in message and f": {bad_rows} of " in message
    assert "1900" in message and "nothing downstream will run" in message  # offending rows are quoted
    snapshot = deployment.lake.interactions(CORRUPT_DS)
    assert not snapshot.exists()  # the failed snapshot was never published ...
    assert (
        read_manifest(staged_version(snapshot))["quarantined_rows"] == 0
    )  # ... only staged: the ETL let them in
    assert published_state(deployment.lake) == before  # every earlier partition, byte for byte
    assert not deployment.lake.recommendations(CORRUPT_DS).exists()
    assert staged_version(deployment.lake.recommendations(CORRUPT_DS)) is None
    assert {p: p.read_bytes() for p in id_maps} == id_maps


def test_a_param_carrying_shell_code_is_refused_and_runs_nothing(deployment: Deployment, tmp_path: Path):
    """Issue 18 item 1: a trigger-form value is never shell code. A dataset that is not a name is refused before
    any job starts; an override reaches the job as one argument, where it is only a bad config value."""
    marker = tmp_path / "pwned"
    before = published_state(deployment.lake)
    refused = deployment.dags_test("tokenrec_nightly", "2026-12-03", dataset=f"tiny; touch {marker}")
    assert refused.returncode != 0 and "dataset" in refused.output, refused.output[-4000:]
    assert "success" not in refused.states().values()
    inert = deployment.dags_test(
        "tokenrec_nightly", "2026-12-04", overrides=[f"etl.kcore=2$(touch {marker})"]
    )
    assert inert.returncode != 0 and inert.states().get("etl") == "failed", inert.output[-4000:]
    assert "etl.kcore" in inert.output  # the config error names the key; the text after it was never run
    assert not marker.exists()
    assert published_state(deployment.lake) == before

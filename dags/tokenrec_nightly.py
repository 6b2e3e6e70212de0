"""tokenrec_nightly: daily top-K recommendations for every active user from the champion model.

etl -> validate_interactions -> batch_inference -> validate_recommendations -> publish

It waits for no retrain: batch_inference resolves ``models:/tokenrec@champion`` once and fails at once, with a
clear message, when there is no champion yet. Outputs are staged and published atomically by ``publish`` after
the Great Expectations gate. Wiring only: see dags/tokenrec_common.py.
"""

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import dag

sys.path.insert(0, str(Path(__file__).resolve().parent))  # Airflow 3 does not put the DAGs folder on sys.path
from tokenrec_common import DEFAULT_ARGS, PARAMS, job  # noqa: E402


@dag(
    dag_id="tokenrec_nightly",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,  # backfill explicitly: `airflow backfill create --dag-id tokenrec_nightly ...`
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["tokenrec", "inference"],
    doc_md=__doc__,
)
def tokenrec_nightly():
    (
        job("etl", spark=True, timeout=timedelta(minutes=30))
        >> job("validate_interactions", spark=True, timeout=timedelta(minutes=20))
        >> job("batch_inference", gpu=True, timeout=timedelta(hours=2))
        >> job("validate_recommendations", timeout=timedelta(minutes=20))
        >> job("publish", timeout=timedelta(minutes=10))
    )


tokenrec_nightly()

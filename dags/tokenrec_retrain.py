"""tokenrec_retrain: weekly (and manual) retraining of LightGCN, the MQ-Tokenizers and the LLM.

etl -> validate_interactions -> train_gnn -> train_tokenizer -> train_llm -> evaluate -> register -> promote

Training tasks run in the ``gpu`` pool so that they never share a GPU; ``promote`` moves the MLflow alias
``champion`` only when the challenger passes the gate. Wiring only: see dags/tokenrec_common.py.
"""

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import dag

sys.path.insert(0, str(Path(__file__).resolve().parent))  # Airflow 3 does not put the DAGs folder on sys.path
from tokenrec_common import DEFAULT_ARGS, PARAMS, job  # noqa: E402


@dag(
    dag_id="tokenrec_retrain",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # the ETL appends to shared ID maps; retrains of two dates never overlap
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["tokenrec", "training"],
    doc_md=__doc__,
)
def tokenrec_retrain():
    (
        job("etl", spark=True, timeout=timedelta(minutes=30))
        >> job("validate_interactions", spark=True, timeout=timedelta(minutes=20))
        >> job("train_gnn", gpu=True, timeout=timedelta(hours=2))
        >> job("train_tokenizer", gpu=True, timeout=timedelta(hours=1))
        >> job("train_llm", gpu=True, timeout=timedelta(hours=8))
        >> job("evaluate", gpu=True, timeout=timedelta(hours=1))
        >> job("register", timeout=timedelta(minutes=20))
        >> job("promote", timeout=timedelta(minutes=10))
    )


tokenrec_retrain()

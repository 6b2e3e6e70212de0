"""R9: the DAGs are healthy — they load without import errors, have the documented structure, import nothing
heavy at parse time, and set retries, back-off and a timeout on every task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag in bag.dags.values():
    out["dags"][dag.dag_id] = {
        "schedule": str(dag.schedule), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "start_date": dag.start_date.isoformat(),
        "edges": sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids),
        "tasks": {t.task_id: {"retries": t.retries, "backoff": t.retry_exponential_backoff,
                              "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                              "pool": t.pool, "job": t.job, "operator": type(t).__name__} for t in dag.tasks},
    }
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "pyspark", "faiss", "transformers", "tokenrec", "mlflow", "great_expectations"})
out["heavy"] = heavy
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow")),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PARSE, str(DAGS)], capture_output=True, text=True, env=env, timeout=300
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT") :])


def _chain(tasks):
    return sorted([a, b] for a, b in zip(tasks, tasks[1:], strict=False))


def test_dagbag_has_no_import_errors_and_both_dags(parsed):
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == {"tokenrec_retrain", "tokenrec_nightly"}


def test_structure_is_the_documented_one(parsed):
    retrain = [
        "etl",
        "validate_interactions",
        "train_gnn",
        "train_tokenizer",
        "train_llm",
        "evaluate",
        "register",
        "promote",
    ]
    nightly = ["etl", "validate_interactions", "batch_inference", "validate_recommendations", "publish"]
    assert parsed["dags"]["tokenrec_retrain"]["edges"] == _chain(retrain)
    assert parsed["dags"]["tokenrec_nightly"]["edges"] == _chain(nightly)
    pools = {"etl": "tokenrec_etl", **dict.fromkeys(("train_gnn", "train_tokenizer", "train_llm", "evaluate",
                                                     "batch_inference"), "gpu")}  # fmt: skip
    shipped = json.loads((DAGS.parent / "infra" / "config" / "airflow-pools.json").read_text())
    assert set(shipped) == set(pools.values())  # make airflow-setup creates every pool a task names
    for dag in parsed["dags"].values():
        for task_id, task in dag["tasks"].items():
            assert task["pool"] == pools.get(task_id, "default_pool"), task_id
            assert (task["operator"], task["job"]) == ("JobOperator", task_id)  # an argument list, no shell


def test_no_heavy_imports_at_parse_time(parsed):
    assert parsed["heavy"] == []


def test_retries_backoff_timeouts_and_fixed_utc_start(parsed):
    for dag in parsed["dags"].values():
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        assert dag["start_date"].endswith("+00:00")
        for task in dag["tasks"].values():
            assert (
                task["retries"] >= 1 and task["backoff"] is True and task["timeout"] and task["timeout"] > 0
            )
    assert parsed["dags"]["tokenrec_retrain"]["schedule"] == "@weekly"
    assert parsed["dags"]["tokenrec_nightly"]["schedule"] == "@daily"


def test_every_task_has_a_job_module(parsed):
    jobs = Path(__file__).resolve().parents[2] / "jobs"
    tasks = {t for dag in parsed["dags"].values() for t in dag["tasks"]}
    assert sorted(t for t in tasks if not (jobs / f"{t}.py").is_file()) == []

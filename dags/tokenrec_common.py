"""Wiring shared by the tokenrec DAGs: one BashOperator per pipeline task, calling ``python -m jobs.<task>``.

DAG files are configuration: nothing heavy is imported here (no torch, pyspark, faiss, tokenrec). Every task
runs its job in a fresh process, for the logical date ``{{ ds }}`` only, and is idempotent for that date.

Where things come from (all resolved when the task runs, never at parse time):
- DAG params (trigger form or ``airflow dags test -c``): ``dataset``, ``profile`` (demo, full, tiny), ``config``
  (a YAML file), ``overrides`` (a list of ``section.key=value``).
- Airflow Variables, with local defaults: ``tokenrec_home`` (lake, runs, MLflow store), ``tokenrec_python``
  (interpreter with tokenrec installed), ``tokenrec_spark_master`` (``yarn``, ``k8s://...``; unset = the
  config's ``spark.master``, ``local[*]`` by default), ``tokenrec_spark_submit`` (e.g. ``spark-submit
  --deploy-mode cluster``; empty runs Spark jobs in-process), ``tokenrec_mlflow_uri`` (empty = SQLite store
  under tokenrec_home).

Retries: a job that exits with status 2 failed on its input, a gate or the registry; the task fails at once
(:class:`JobOperator`). Any other failure is retried with exponential back-off.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Context, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

PROJECT = Path(__file__).resolve().parents[1]
GPU_POOL = "gpu"  # one slot per GPU; created by `make airflow-setup` (airflow pools set gpu 1 ...)
EXPECTED_FAILURE = 2  # exit status of a job that failed on its input, a gate or a missing champion (cli.py)

DEFAULT_ARGS = {
    "owner": "tokenrec",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(hours=1),
}

PARAMS = {
    "dataset": Param("ml100k", type="string", description="data set preset: ml100k, lastfm, beauty, or your own"),
    "profile": Param(
        "", type="string", description="shipped config profile: demo (CPU, minutes), full (GPU), tiny (smoke tests)"
    ),
    "config": Param("", type="string", description="YAML config file (empty: defaults + preset)"),
    "overrides": Param([], type="array", description="config overrides, each 'section.key=value'"),
}

_PYTHON = "{{ var.value.get('tokenrec_python', '" + sys.executable + "') }}"
_ARGS = (
    " --ds {{ ds }} --dataset {{ params.dataset }}"
    "{% if params.profile %} --profile {{ params.profile }}{% endif %}"
    "{% if params.config %} --config {{ params.config }}{% endif %}"
    "{% for kv in params.overrides %} --set '{{ kv }}'{% endfor %}"
    # Set Variables win over the config; unset ones leave it alone (spark.master defaults to local[*] there).
    "{% if var.value.get('tokenrec_spark_master', '') %}"
    " --set spark.master='{{ var.value.get(\"tokenrec_spark_master\") }}'{% endif %}"
    "{% if var.value.get('tokenrec_mlflow_uri', '') %}"
    " --set mlflow.tracking_uri='{{ var.value.get(\"tokenrec_mlflow_uri\") }}'{% endif %}"
)
_ENV = {
    # The Variable wins; else the scheduler's own TOKENREC_HOME (as `make run` sets it); else <project>/var.
    "TOKENREC_HOME": "{{ var.value.get('tokenrec_home', '" + os.environ.get("TOKENREC_HOME", str(PROJECT / "var")) + "') }}",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "PYTHONUNBUFFERED": "1",
}


class JobOperator(BashOperator):
    """A BashOperator whose expected failures are final: exit status 2 fails the task at once, without retries.

    Bad input, a failed Great Expectations gate or a missing champion give the same answer after every back-off,
    so retrying them only delays the alert; crashes (any other status: a killed process, out of memory, a lost
    Spark executor) are retried as ``retries`` says.
    """

    def execute(self, context: Context) -> Any:
        try:
            return super().execute(context)
        except AirflowSkipException:
            raise
        except AirflowException as exc:
            process = self.subprocess_hook.sub_process
            if process is not None and process.returncode == EXPECTED_FAILURE:
                raise AirflowFailException(
                    f"{self.task_id} failed on its input, a gate or the registry (exit status {EXPECTED_FAILURE}; "
                    "the reason is the 'tokenrec ...: error:' line above). Not retried: fix the cause, then "
                    "clear the task."
                ) from exc
            raise


def job(task_id: str, *, spark: bool = False, gpu: bool = False, timeout: timedelta = timedelta(hours=1)) -> BashOperator:
    """A task running ``jobs/<task_id>.py`` for ``{{ ds }}``; Spark jobs go through spark-submit when configured."""
    if spark:
        runner = (
            "{% set submit = var.value.get('tokenrec_spark_submit', '') %}"
            "{% if submit %}{{ submit }} " + str(PROJECT / "jobs" / f"{task_id}.py")
            + "{% else %}" + _PYTHON + f" -m jobs.{task_id}" + "{% endif %}"
        )
    else:
        runner = _PYTHON + f" -m jobs.{task_id}"
    return JobOperator(
        task_id=task_id,
        bash_command=runner + _ARGS,
        env=_ENV,
        append_env=True,
        cwd=str(PROJECT),
        pool=GPU_POOL if gpu else "default_pool",
        execution_timeout=timeout,
    )

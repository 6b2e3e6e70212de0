"""Wiring shared by the tokenrec DAGs: one BashOperator per pipeline task, calling ``python -m jobs.<task>``.

DAG files are configuration: nothing heavy is imported here (no torch, pyspark, faiss, tokenrec). Every task
runs its job in a fresh process, for the logical date ``{{ ds }}`` only, and is idempotent for that date.

Where things come from (all resolved when the task runs, never at parse time):
- DAG params (trigger form or ``airflow dags test -c``): ``dataset``, ``profile`` (demo, full), ``config``
  (a YAML file), ``overrides`` (a list of ``section.key=value``).
- Airflow Variables, with local defaults: ``tokenrec_home`` (lake, runs, MLflow store), ``tokenrec_python``
  (interpreter with tokenrec installed), ``tokenrec_spark_master`` (``local[*]``, ``yarn``, ``k8s://...``),
  ``tokenrec_spark_submit`` (e.g. ``spark-submit --deploy-mode cluster``; empty runs Spark jobs in-process),
  ``tokenrec_mlflow_uri`` (empty = SQLite store under tokenrec_home).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param

PROJECT = Path(__file__).resolve().parents[1]
GPU_POOL = "gpu"  # one slot per GPU; created by `make airflow-setup` (airflow pools set gpu 1 ...)

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
    "profile": Param("", type="string", description="shipped config profile: demo (CPU, minutes) or full (GPU)"),
    "config": Param("", type="string", description="YAML config file (empty: defaults + preset)"),
    "overrides": Param([], type="array", description="config overrides, each 'section.key=value'"),
}

_PYTHON = "{{ var.value.get('tokenrec_python', '" + sys.executable + "') }}"
_ARGS = (
    " --ds {{ ds }} --dataset {{ params.dataset }}"
    "{% if params.profile %} --profile {{ params.profile }}{% endif %}"
    "{% if params.config %} --config {{ params.config }}{% endif %}"
    "{% for kv in params.overrides %} --set '{{ kv }}'{% endfor %}"
    " --set spark.master='{{ var.value.get(\"tokenrec_spark_master\", \"local[*]\") }}'"
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
    return BashOperator(
        task_id=task_id,
        bash_command=runner + _ARGS,
        env=_ENV,
        append_env=True,
        cwd=str(PROJECT),
        pool=GPU_POOL if gpu else "default_pool",
        execution_timeout=timeout,
    )

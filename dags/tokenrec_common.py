"""Wiring shared by the tokenrec DAGs: one :class:`JobOperator` per pipeline task, running ``jobs/<task>.py``.

DAG files are configuration: nothing heavy is imported here (no torch, pyspark, faiss, tokenrec). Every task
runs its job in a fresh process, for the logical date ``ds`` only, and is idempotent for that date.

No shell is involved anywhere: each task builds an argument list (:func:`job_argv`) and starts it directly, so a
trigger-form value is one argument of the job, never shell code. Every DAG param is also checked against its
pattern or choices (:data:`PARAMS`) when the run is triggered and again when a task starts; a bad value fails
the task before anything runs, naming the param and what is allowed.

Where things come from (all resolved when the task runs, never at parse time):
- DAG params (trigger form or ``airflow dags test -c``): ``dataset``, ``profile`` (demo, full, tiny, bench-cpu),
  ``config`` (a YAML file), ``overrides`` (a list of ``section.key=value``).
- Airflow Variables (:data:`VARIABLES`), with local defaults: ``tokenrec_home`` (lake, runs, MLflow store),
  ``tokenrec_python`` (interpreter with tokenrec installed), ``tokenrec_spark_master`` (``yarn``,
  ``k8s://...``; unset = the config's ``spark.master``, ``local[*]`` by default), ``tokenrec_spark_submit``
  (e.g. ``spark-submit --deploy-mode cluster``, split into words like a shell would, but never run by one;
  empty runs Spark jobs in-process), ``tokenrec_mlflow_uri`` (empty = SQLite store under tokenrec_home).
  The ones in :data:`VARIABLE_OVERRIDES` reach the job as ``--set <config key>=<value>`` when set.

Pools: ``gpu`` (one slot per GPU) for the torch tasks; ``tokenrec_etl`` (one slot) for the ETL of both DAGs,
which appends to the same ID maps (the ETL also holds a file lock on them, for runs outside Airflow). Both are
created by ``make airflow-setup``.

Retries: a job that exits with status 2 failed on its input, a gate or the registry; the task fails at once.
Any other failure is retried with exponential back-off.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.sdk import BaseOperator, Context, Param, Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException

PROJECT = Path(__file__).resolve().parents[1]
GPU_POOL = "gpu"  # one slot per GPU; `make airflow-setup` imports infra/config/airflow-pools.json
ETL_POOL = "tokenrec_etl"  # one slot: the ETLs of both DAGs never overlap (same file)
EXPECTED_FAILURE = 2  # exit status of a job that failed on its input, a gate or a missing champion (cli.py)

DEFAULT_ARGS = {
    "owner": "tokenrec",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(hours=1),
}

# The shipped profiles (tokenrec/profiles/*.yaml; tests/airflow/test_dags.py keeps the two lists equal).
PROFILES = ("", "demo", "full", "tiny", "bench-cpu")
DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CONFIG_PATTERN = r"^$|^[A-Za-z0-9_/][A-Za-z0-9_./-]*\.ya?ml$"
OVERRIDE_PATTERN = r"^[a-z_]+(\.[a-z0-9_]+)+=[^\n\r]*$"

PARAMS = {
    "dataset": Param(
        "ml100k", type="string", pattern=DATASET_PATTERN,
        description="data set preset: ml100k, lastfm, beauty, or your own name (letters, digits, _ . -)",
    ),
    "profile": Param(
        "", type="string", enum=list(PROFILES),
        description="shipped config profile: demo (CPU, minutes), full (GPU), tiny (smoke tests), bench-cpu",
    ),
    "config": Param(
        "", type="string", pattern=CONFIG_PATTERN,
        description="YAML config file, a path ending in .yaml or .yml (empty: defaults + preset)",
    ),
    "overrides": Param(
        [], type="array", items={"type": "string", "pattern": OVERRIDE_PATTERN},
        description="config overrides, each 'section.key=value'",
    ),
}  # fmt: skip

# Airflow Variables the tasks read; the keys of VARIABLE_OVERRIDES reach the job as --set <config key>=<value>.
VARIABLES = ("tokenrec_home", "tokenrec_python", "tokenrec_spark_master", "tokenrec_spark_submit", "tokenrec_mlflow_uri")
VARIABLE_OVERRIDES = {"tokenrec_spark_master": "spark.master", "tokenrec_mlflow_uri": "mlflow.tracking_uri"}

_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "PYTHONUNBUFFERED": "1",
}


def check_params(params: dict[str, Any]) -> None:
    """Fail (no retries) naming the first param that is not what :data:`PARAMS` allows."""

    def refuse(name: str, value: Any, allowed: str) -> None:
        raise AirflowFailException(
            f"DAG param {name!r} = {value!r} is not allowed: {allowed}. Nothing was run; trigger again with a "
            "valid value."
        )

    dataset, profile, config = params.get("dataset"), params.get("profile", ""), params.get("config", "")
    overrides = params.get("overrides", [])
    if not isinstance(dataset, str) or not re.fullmatch(DATASET_PATTERN, dataset):
        refuse("dataset", dataset, "letters, digits, '_', '.' or '-', starting with a letter or digit")
    if profile not in PROFILES:
        refuse("profile", profile, f"one of {', '.join(repr(p) for p in PROFILES)}")
    if not isinstance(config, str) or not re.fullmatch(CONFIG_PATTERN, config):
        refuse("config", config, "empty or a path of letters, digits, '_', '.', '/', '-' ending in .yaml or .yml")
    if not isinstance(overrides, list):
        refuse("overrides", overrides, "a list of 'section.key=value' strings")
    for item in overrides:
        if not isinstance(item, str) or not re.fullmatch(OVERRIDE_PATTERN, item):
            refuse("overrides", item, "each item 'section.key=value' on one line (e.g. 'etl.kcore=10')")


def job_argv(
    task_id: str, ds: str, params: dict[str, Any], variables: dict[str, str], *, spark: bool = False
) -> list[str]:
    """The job's argument list: interpreter (or spark-submit) and ``--opt=value`` words, one per value."""
    submit = shlex.split(variables.get("tokenrec_spark_submit", "")) if spark else []
    if submit:
        argv = [*submit, str(PROJECT / "jobs" / f"{task_id}.py")]
    else:
        argv = [variables.get("tokenrec_python") or sys.executable, "-m", f"jobs.{task_id}"]
    argv += [f"--ds={ds}", f"--dataset={params['dataset']}"]
    if params.get("profile"):
        argv.append(f"--profile={params['profile']}")
    if params.get("config"):
        argv.append(f"--config={params['config']}")
    argv += [f"--set={kv}" for kv in params.get("overrides", [])]
    # Set Variables win over the config; unset ones leave it alone (spark.master defaults to local[*] there).
    argv += [f"--set={key}={variables[var]}" for var, key in VARIABLE_OVERRIDES.items() if variables.get(var)]
    return argv


def _variables() -> dict[str, str]:
    """The Variables in :data:`VARIABLES`, "" where unset."""
    return {name: str(Variable.get(name, default="")) for name in VARIABLES}


class JobOperator(BaseOperator):
    """Runs ``jobs/<job>.py`` for the run's ``ds`` as an argument list (no shell); expected failures are final.

    Exit status 2 (bad input, a failed Great Expectations gate, a missing champion) fails the task at once:
    every back-off would give the same answer, so retrying only delays the alert. Crashes (any other status: a
    killed process, out of memory, a lost Spark executor) are retried as ``retries`` says.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, job: str, spark: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.spark = spark
        self._hook: SubprocessHook | None = None

    def execute(self, context: Context) -> None:
        params = dict(context["params"])
        check_params(params)
        variables = _variables()
        argv = job_argv(self.job, context["ds"], params, variables, spark=self.spark)
        # The Variable wins; else the worker's own TOKENREC_HOME (as `make run` sets it); else <project>/var.
        home = variables["tokenrec_home"] or os.environ.get("TOKENREC_HOME") or str(PROJECT / "var")
        env = {**os.environ, **_ENV, "TOKENREC_HOME": home}
        self._hook = SubprocessHook()
        result = self._hook.run_command(argv, env=env, cwd=str(PROJECT))
        if result.exit_code == EXPECTED_FAILURE:
            raise AirflowFailException(
                f"{self.task_id} failed on its input, a gate or the registry (exit status {EXPECTED_FAILURE}; "
                "the reason is the 'tokenrec ...: error:' line above). Not retried: fix the cause, then clear "
                "the task."
            )
        if result.exit_code != 0:
            raise AirflowException(f"{self.task_id}: the job exited with status {result.exit_code}; retried")

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.send_sigterm()


def job(task_id: str, *, spark: bool = False, gpu: bool = False, timeout: timedelta = timedelta(hours=1)) -> JobOperator:
    """A task running ``jobs/<task_id>.py`` for ``ds``; Spark jobs go through spark-submit when configured."""
    pool = GPU_POOL if gpu else ETL_POOL if task_id == "etl" else "default_pool"
    return JobOperator(task_id=task_id, job=task_id, spark=spark, pool=pool, execution_timeout=timeout)

"""DAG params never reach a shell (issue 18 item 1): the argument lists the tasks run, and the param checks.

The operator is loaded from ``dags/tokenrec_common.py`` as Airflow loads it; nothing here runs a job. The end to
end proof that a hostile trigger runs nothing is in tests/airflow/test_dags_e2e.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"dataset": "ml100k", "profile": "", "config": "", "overrides": []}
NO_VARIABLES = dict.fromkeys(
    (
        "tokenrec_home",
        "tokenrec_python",
        "tokenrec_spark_master",
        "tokenrec_spark_submit",
        "tokenrec_mlflow_uri",
    ),
    "",
)


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    """dags/tokenrec_common.py, imported with an Airflow home of its own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    spec = importlib.util.spec_from_file_location("tokenrec_common", REPO / "dags" / "tokenrec_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    mp.undo()


def test_the_job_gets_one_argument_per_value_and_no_shell(common):
    hostile = {**PARAMS, "overrides": ["llm.prompt_template=x'; touch /tmp/pwned; echo '", "etl.kcore=$(id)"]}
    argv = common.job_argv("etl", "2026-11-27", hostile, NO_VARIABLES)
    assert argv == [
        sys.executable, "-m", "jobs.etl", "--ds=2026-11-27", "--dataset=ml100k",
        "--set=llm.prompt_template=x'; touch /tmp/pwned; echo '", "--set=etl.kcore=$(id)",
    ]  # fmt: skip
    assert "bash" not in argv and "sh" not in argv and "-c" not in argv


def test_profile_config_and_variables_become_options(common):
    params = {
        "dataset": "lastfm",
        "profile": "demo",
        "config": "infra/config/cluster.yaml",
        "overrides": ["a.b=1"],
    }
    variables = {**NO_VARIABLES, "tokenrec_python": "/opt/venv/bin/python", "tokenrec_spark_master": "yarn",
                 "tokenrec_mlflow_uri": "http://mlflow:5000"}  # fmt: skip
    argv = common.job_argv("train_gnn", "2026-11-27", params, variables)
    assert argv == [
        "/opt/venv/bin/python", "-m", "jobs.train_gnn", "--ds=2026-11-27", "--dataset=lastfm", "--profile=demo",
        "--config=infra/config/cluster.yaml", "--set=a.b=1", "--set=spark.master=yarn",
        "--set=mlflow.tracking_uri=http://mlflow:5000",
    ]  # fmt: skip


def test_spark_submit_is_split_into_words_and_runs_the_job_file(common):
    variables = {
        **NO_VARIABLES,
        "tokenrec_spark_submit": "spark-submit --master 'spark://m:7077' --deploy-mode client",
    }
    argv = common.job_argv("etl", "2026-11-27", PARAMS, variables, spark=True)
    assert argv[:6] == ["spark-submit", "--master", "spark://m:7077", "--deploy-mode", "client",
                        str(REPO / "jobs" / "etl.py")]  # fmt: skip
    assert common.job_argv("train_llm", "2026-11-27", PARAMS, variables)[1:3] == ["-m", "jobs.train_llm"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dataset", "ml100k; touch /tmp/x"),
        ("dataset", "$(id)"),
        ("dataset", "-rf"),
        ("dataset", ""),
        ("profile", "demo && reboot"),
        ("profile", "nightly"),
        ("config", "a.yaml; rm -rf /"),
        ("config", "--help.yaml"),
        ("config", "notes.txt"),
        ("overrides", "etl.kcore"),
        ("overrides", "etl.kcore=5\nrm -rf /"),
        ("overrides", "; touch /tmp/x"),
    ],
)
def test_a_bad_param_is_refused_naming_it(common, name, value):
    from airflow.sdk.exceptions import AirflowFailException

    params = {**PARAMS, name: [value] if name == "overrides" else value}
    with pytest.raises(
        AirflowFailException, match=rf"DAG param '{name}' = .* is not allowed: .*Nothing was run"
    ):
        common.check_params(params)


def test_good_params_pass_and_the_form_schema_agrees(common):
    from airflow.sdk.definitions.param import ParamsDict

    good = {"dataset": "my-shop.v2", "profile": "bench-cpu", "config": "/etc/tokenrec/shop.yml",
            "overrides": ["etl.kcore=10", "llm.lr=3e-4", "paths.lake=s3a://bucket/lake"]}  # fmt: skip
    common.check_params(good)
    params = ParamsDict(common.PARAMS)
    params.update(good)
    params.validate()  # what Airflow checks at trigger time
    bad = ParamsDict(common.PARAMS)
    with pytest.raises(Exception, match="dataset"):
        bad.update({"dataset": "ml100k; touch /tmp/x"})
        bad.validate()


def test_the_profile_choices_are_the_shipped_profiles(common):
    shipped = {p.stem for p in (REPO / "tokenrec" / "profiles").glob("*.yaml")}
    assert set(common.PROFILES) == shipped | {""}

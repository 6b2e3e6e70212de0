"""Both DAGs end to end through Airflow (issue 7): ``airflow dags test`` of ``tokenrec_retrain`` and
``tokenrec_nightly`` on a tiny generated data set, with Airflow's SQLite metadata DB, the MLflow SQLite store and
the lake all in a temporary folder.

One retrain (module fixture) and a three-day nightly backfill are shared by the tests, which then show:
- every task instance succeeded, the training tasks ran in the ``gpu`` pool, a champion is registered, and each
  night publishes K rows for every active user, served by the champion's version (folded-in users included);
- R1 through Airflow: re-running the middle night gives identical rows and leaves the other dates untouched;
- R2 through Airflow: a night whose landed events carry an exporter's sentinel time (1900-01-01) passes the ETL
  (the values parse) but fails at ``validate_interactions``, at once and without retries; nothing downstream
  runs and every previously published partition is byte-for-byte the same;
- a night without a champion fails fast at ``batch_inference`` with a message that says what to do.

The data: 80 users in 4 taste clusters over 60 items (~1.7k events) landed as ``dt=<day>/events.csv`` CSV
partitions before the retrain date, then one partition per night with ~40 events, a new user and a new item.
The source is configured as any team's own data is: a YAML file with a ``source`` section, passed as the DAG
param ``config``; sizes come from ``--profile tiny`` (tokenrec/profiles/tiny.yaml).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenrec import schema
from tokenrec.config import Config, load_config
from tokenrec.storage import current_version, read_manifest, staged_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
RETRAIN_DS = "2026-11-27"
NIGHTS = ("2026-11-28", "2026-11-29", "2026-11-30")
CORRUPT_DS = "2026-12-01"
K = 10  # inference.topk of the tiny profile
USERS, ITEMS, CLUSTERS = 80, 60, 4
SENTINEL_TIME = -2_208_988_800  # 1900-01-01T00:00:00Z: what a broken export writes for "unknown"
RETRAIN = ["etl", "validate_interactions", "train_gnn", "train_tokenizer", "train_llm", "evaluate", "register", "promote"]
NIGHTLY = ["etl", "validate_interactions", "batch_inference", "validate_recommendations", "publish"]
GPU_TASKS = {"train_gnn", "train_tokenizer", "train_llm", "evaluate", "batch_inference"}
POOLS = {"etl": "tokenrec_etl", **dict.fromkeys(GPU_TASKS, "gpu")}


# ------------------------------------------------------------------------------------------------ data


def _epoch(day: str) -> int:
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.UTC).timestamp())


def _land(raw: Path, day: str, rows: list[tuple[int | str, int | str, int]]) -> None:
    folder = raw / f"dt={day}"
    folder.mkdir(parents=True)
    lines = ["user_id,item_id,timestamp", *(f"u{u},i{i},{t}" for u, i, t in rows)]
    (folder / "events.csv").write_text("\n".join(lines) + "\n")


def history(rng: np.random.Generator, until: str) -> list[tuple[int, int, int]]:
    """12..29 distinct items per user, 80 % from the user's cluster, between 2026-10-01 and ``until``."""
    start, end = _epoch("2026-10-01"), _epoch(until) + 86_400
    per_cluster = ITEMS // CLUSTERS
    rows = []
    for user in range(USERS):
        own = np.arange(per_cluster) + (user % CLUSTERS) * per_cluster
        n = int(rng.integers(12, 30))
        n_own = min(int(0.8 * n), per_cluster)
        others = np.setdiff1d(np.arange(ITEMS), own)
        items = np.concatenate([rng.choice(own, n_own, replace=False), rng.choice(others, n - n_own, replace=False)])
        times = np.sort(rng.integers(start, end, n))
        rows += [(user, int(i), int(t)) for i, t in zip(items, times, strict=True)]
    return rows


def one_night(rng: np.random.Generator, day: str, night: int, seen: dict[int, set[int]]) -> list[tuple]:
    """~40 events on ``day``: 12 known users each meet 2 unseen items, a new user meets 6 known items, and a new
    item is met by 5 known users (enough for the 5-core, so fold-in has a new user and a new item to serve)."""
    start = _epoch(day)
    new_user, new_item = USERS + night, ITEMS + night
    rows = []
    for user in rng.choice(USERS, 12, replace=False):
        unseen = np.setdiff1d(np.arange(ITEMS), sorted(seen[int(user)]))
        for item in rng.choice(unseen, 2, replace=False):
            rows.append((int(user), int(item)))
            seen[int(user)].add(int(item))
    rows += [(new_user, int(i)) for i in rng.choice(ITEMS, 6, replace=False)]
    rows += [(int(u), new_item) for u in rng.choice(USERS, 5, replace=False)]
    times = np.sort(rng.integers(start, start + 86_400, len(rows)))
    return [(u, i, int(t)) for (u, i), t in zip(rows, times, strict=True)]


# ---------------------------------------------------------------------------------------------- Airflow


@dataclass
class Run:
    """One ``airflow dags test``: exit status, output, and the task instances' (state, try_number, pool)."""

    returncode: int
    output: str
    tasks: dict[str, tuple[str | None, int, str]]

    def states(self) -> dict[str, str | None]:
        return {task: state for task, (state, _, _) in self.tasks.items()}


class Deployment:
    """A throw-away Airflow + TOKENREC_HOME + raw landing folder, set up like ``make airflow-setup``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.retrain: Run | None = None  # the module's one tokenrec_retrain run
        self.home, self.raw = self.root / "home", self.root / "raw"
        self.airflow_home = self.home / "airflow"
        self.airflow_home.mkdir(parents=True)
        self.source_config = self.root / "tiny-source.yaml"
        self.source_config.write_text(
            f"# a team's own event log: CSV landing partitions dt=YYYY-MM-DD/, epoch seconds\n"
            f"source:\n  dataset: tiny\n  format: csv\n  path: {self.raw}\n"
            f"  user_col: user_id\n  item_col: item_id\n  time_col: timestamp\n  time_unit: s\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "TOKENREC_"))}
        self.env = {
            **env,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "TOKENREC_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "SPARK_LOCAL_IP": "127.0.0.1",
        }
        self.airflow("db", "migrate")
        self.airflow("pools", "set", "gpu", "1", "one slot per GPU: training and inference never share a GPU")
        self.airflow("pools", "set", "tokenrec_etl", "1", "one slot: the ETLs of both DAGs share the ID maps")
        self.lake = schema.Lake.at(self.home / "lake")

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        airflow = Path(sys.executable).with_name("airflow")
        proc = subprocess.run(
            [str(airflow), *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=900
        )
        if check and proc.returncode:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def dags_test(self, dag_id: str, ds: str, mark_success: str | None = None, **params: object) -> Run:
        conf = {"dataset": "tiny", "profile": "tiny", "config": str(self.source_config), **params}
        args = ["dags", "test", dag_id, ds, "-c", json.dumps(conf)]
        if mark_success:
            args += ["--mark-success-pattern", mark_success]
        proc = self.airflow(*args, check=False)
        return Run(proc.returncode, proc.stdout + proc.stderr, self.task_instances(dag_id, ds))

    def task_instances(self, dag_id: str, ds: str) -> dict[str, tuple[str | None, int, str]]:
        """(state, try_number, pool) of each task of the latest run of ``dag_id`` for ``ds``, from Airflow's DB."""
        with sqlite3.connect(self.airflow_home / "airflow.db") as db:
            rows = db.execute(
                "select ti.task_id, ti.state, ti.try_number, ti.pool from task_instance ti "
                "where ti.run_id = (select run_id from dag_run where dag_id = ? and logical_date like ? "
                "order by id desc limit 1) and ti.dag_id = ?",
                (dag_id, f"{ds}%", dag_id),
            ).fetchall()
        return {task: (state, tries, pool) for task, state, tries, pool in rows}

    def config(self) -> Config:
        """The config the DAG tasks resolve, as far as the registry needs it (the MLflow store under home)."""
        return load_config(overrides=[f"paths.home={self.home}"])


def assert_succeeded(run: Run, tasks: list[str]) -> None:
    assert run.returncode == 0, run.output[-6000:]
    assert run.states() == dict.fromkeys(tasks, "success"), run.output[-6000:]


def published_state(lake: schema.Lake) -> dict[str, tuple[str, dict[str, bytes]]]:
    """Every published interactions/recommendations partition: its link target and its files' bytes."""
    state = {}
    for table in (schema.INTERACTIONS_TABLE, schema.RECOMMENDATIONS_TABLE):
        folder = lake.table(table)
        for link in sorted(p for p in folder.iterdir() if p.is_symlink()):
            version = current_version(link)
            files = {f.name: f.read_bytes() for f in sorted(version.iterdir()) if f.is_file()}
            state[f"{table}/{link.name}"] = (os.readlink(link), files)
    return state


def read_rows(lake: schema.Lake, ds: str):
    return pq.read_table(lake.recommendations(ds)).sort_by([("user_id", "ascending"), ("rank", "ascending")])


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Airflow set up, the history landed, and ``tokenrec_retrain`` run once for RETRAIN_DS."""
    deployment = Deployment(tmp_path_factory.mktemp("airflow-e2e"))
    rng = np.random.default_rng(7)
    rows = history(rng, RETRAIN_DS)
    _land(deployment.raw, RETRAIN_DS, rows)
    seen: dict[int, set[int]] = {u: set() for u in range(USERS)}
    for user, item, _ in rows:
        seen[user].add(item)
    for night, day in enumerate(NIGHTS):
        _land(deployment.raw, day, one_night(rng, day, night, seen))  # landed later than the retrain's date
    deployment.retrain = deployment.dags_test("tokenrec_retrain", RETRAIN_DS)
    return deployment


@pytest.fixture(scope="module")
def backfill(deployment: Deployment) -> dict[str, Run]:
    """``tokenrec_nightly`` for three consecutive dates, as a backfill runs them (oldest first)."""
    assert_succeeded(deployment.retrain, RETRAIN)
    return {ds: deployment.dags_test("tokenrec_nightly", ds) for ds in NIGHTS}


# ------------------------------------------------------------------------------------------------- tests


def test_retrain_runs_every_task_in_its_pool_and_registers_a_champion(deployment: Deployment):
    from tokenrec.mlops import registry

    assert_succeeded(deployment.retrain, RETRAIN)
    for task, (_, tries, pool) in deployment.retrain.tasks.items():
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


def test_rerunning_the_middle_night_gives_identical_rows_and_leaves_other_dates_alone(
    deployment: Deployment, backfill: dict[str, Run]
):
    """R1 through Airflow: a backfill of D-1, D, D+1, then D again."""
    assert [ds for ds, run in backfill.items() if run.returncode] == []
    partitions = sorted(p.name for p in deployment.lake.table(schema.RECOMMENDATIONS_TABLE).iterdir()
                        if p.is_symlink())  # fmt: skip
    assert partitions == [f"dt={ds}" for ds in NIGHTS]
    before = published_state(deployment.lake)
    middle = NIGHTS[1]
    rows_before = read_rows(deployment.lake, middle)
    interactions_before = pq.read_table(deployment.lake.interactions(middle))

    rerun = deployment.dags_test("tokenrec_nightly", middle)

    assert_succeeded(rerun, NIGHTLY)
    assert read_rows(deployment.lake, middle).equals(rows_before)
    assert pq.read_table(deployment.lake.interactions(middle)).equals(interactions_before)
    after = published_state(deployment.lake)
    touched = {key for key in before if after[key] != before[key]}
    assert touched <= {f"recommendations/dt={middle}", f"interactions/snapshot_date={middle}"}
    assert set(after) == set(before)


def test_a_night_with_corrupt_input_fails_at_validate_interactions_and_publishes_nothing(
    deployment: Deployment, backfill: dict[str, Run]
):
    """R2 through Airflow: the ETL parses the sentinel times, the gate refuses them, nothing else moves."""
    assert [ds for ds, run in backfill.items() if run.returncode] == []
    before = published_state(deployment.lake)
    id_maps = {p: p.read_bytes() for p in sorted(deployment.lake.table("id_maps").rglob("*")) if p.is_file()}
    rng = np.random.default_rng(11)
    events = [(u, i, SENTINEL_TIME) for u, i in rng.integers(0, [USERS, ITEMS], size=(30, 2)).tolist()]
    bad_rows = len({(u, i) for u, i, _ in events})  # each distinct (user, item) keeps its earliest, bad, time
    _land(deployment.raw, CORRUPT_DS, events)

    run = deployment.dags_test("tokenrec_nightly", CORRUPT_DS)

    assert run.returncode != 0
    assert run.tasks["etl"][0] == "success"
    assert run.tasks["validate_interactions"][:2] == ("failed", 1)  # at once: a failed gate is not retried
    assert {task: run.tasks[task][0] for task in NIGHTLY[2:]} == dict.fromkeys(NIGHTLY[2:], "upstream_failed")
    message = next(line for line in run.output.splitlines() if "tokenrec validate-interactions: error:" in line)
    assert "table interactions" in message and f"snapshot_date={CORRUPT_DS}" in message
    assert "column=event_ts, min_value=1970-01-01" in message and f": {bad_rows} of " in message
    assert "1900" in message and "nothing downstream will run" in message  # offending rows are quoted
    snapshot = deployment.lake.interactions(CORRUPT_DS)
    assert not snapshot.exists()  # the failed snapshot was never published ...
    assert read_manifest(staged_version(snapshot))["quarantined_rows"] == 0  # ... only staged: the ETL let them in
    assert published_state(deployment.lake).items() >= before.items()  # every earlier partition, byte for byte
    assert not deployment.lake.recommendations(CORRUPT_DS).exists()
    assert staged_version(deployment.lake.recommendations(CORRUPT_DS)) is None
    assert {p: p.read_bytes() for p in id_maps} == id_maps


def test_a_night_without_a_champion_fails_fast_at_batch_inference(deployment: Deployment):
    """A registered model that never had a champion: batch_inference fails on its first try, saying what to do.

    The ETL and the gate of the date already ran in the retrain, so they are marked successful here."""
    assert_succeeded(deployment.retrain, RETRAIN)
    run = deployment.dags_test(
        "tokenrec_nightly", RETRAIN_DS, mark_success="etl|validate_interactions",
        overrides=["mlflow.registered_model=tokenrec_untrained"],
    )

    assert run.returncode != 0
    assert run.tasks["batch_inference"][:2] == ("failed", 1)
    assert run.states()["validate_recommendations"] == run.states()["publish"] == "upstream_failed"
    message = next(line for line in run.output.splitlines() if "tokenrec batch-inference: error:" in line)
    assert "'tokenrec_untrained' has no version with alias 'champion'" in message
    assert "run the retrain DAG" in message
    assert not deployment.lake.recommendations(RETRAIN_DS).exists()


def test_a_param_carrying_shell_code_is_refused_and_runs_nothing(deployment: Deployment, tmp_path: Path):
    """Issue 18 item 1: a trigger-form value is never shell code. A dataset that is not a name is refused before
    any job starts; an override reaches the job as one argument, where it is only a bad config value."""
    marker = tmp_path / "pwned"
    before = published_state(deployment.lake)
    refused = deployment.dags_test("tokenrec_nightly", "2026-12-03", dataset=f"tiny; touch {marker}")
    assert refused.returncode != 0 and "dataset" in refused.output, refused.output[-4000:]
    assert "success" not in refused.states().values()
    inert = deployment.dags_test("tokenrec_nightly", "2026-12-04", overrides=[f"etl.kcore=2$(touch {marker})"])
    assert inert.returncode != 0 and inert.states().get("etl") == "failed", inert.output[-4000:]
    assert "etl.kcore" in inert.output  # the config error names the key; the text after it was never run
    assert not marker.exists()
    assert published_state(deployment.lake) == before

"""A throw-away Airflow deployment and the tiny event log that the end-to-end DAG tests run on.

``Deployment`` sets up Airflow (SQLite metadata DB, the ``gpu`` and ``tokenrec_etl`` pools), TOKENREC_HOME and
a raw landing folder in a temporary folder, as ``make airflow-setup`` does, and runs ``airflow dags test``.

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

from tokenrec import schema
from tokenrec.config import Config, load_config
from tokenrec.storage import current_version

REPO = Path(__file__).resolve().parents[2]
RETRAIN_DS = "2026-11-27"
NIGHTS = ("2026-11-28", "2026-11-29")  # landed after the retrain date, served by the nightly DAG in order
CORRUPT_DS = "2026-12-01"
K = 10  # inference.topk of the tiny profile
USERS, ITEMS, CLUSTERS = 80, 60, 4
SENTINEL_TIME = -2_208_988_800  # 1900-01-01T00:00:00Z: what a broken export writes for "unknown"
RETRAIN = [
    "etl",
    "validate_interactions",
    "train_gnn",
    "train_tokenizer",
    "train_llm",
    "evaluate",
    "register",
    "promote",
]
NIGHTLY = ["etl", "validate_interactions", "batch_inference", "validate_recommendations", "publish"]
GPU_TASKS = {"train_gnn", "train_tokenizer", "train_llm", "evaluate", "batch_inference"}
POOLS = {"etl": "tokenrec_etl", **dict.fromkeys(GPU_TASKS, "gpu")}


# ------------------------------------------------------------------------------------------------ data


def _epoch(day: str) -> int:
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.UTC).timestamp())


def land(raw: Path, day: str, rows: list[tuple[int | str, int | str, int]]) -> None:
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
        items = np.concatenate(
            [rng.choice(own, n_own, replace=False), rng.choice(others, n - n_own, replace=False)]
        )
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


def land_event_log(raw: Path) -> None:
    """The history up to RETRAIN_DS in its partition, then one partition per night of NIGHTS (seed 7)."""
    rng = np.random.default_rng(7)
    rows = history(rng, RETRAIN_DS)
    land(raw, RETRAIN_DS, rows)
    seen: dict[int, set[int]] = {u: set() for u in range(USERS)}
    for user, item, _ in rows:
        seen[user].add(item)
    for night, day in enumerate(NIGHTS):
        land(raw, day, one_night(rng, day, night, seen))


def land_corrupt_night(raw: Path, day: str) -> int:
    """30 events at the exporter's sentinel time on ``day``; returns the distinct (user, item) pairs among them
    (the ETL keeps each pair's earliest time, which is the bad one)."""
    rng = np.random.default_rng(11)
    events = [(u, i, SENTINEL_TIME) for u, i in rng.integers(0, [USERS, ITEMS], size=(30, 2)).tolist()]
    land(raw, day, events)
    return len({(u, i) for u, i, _ in events})


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
        self.airflow("pools", "import", str(REPO / "infra" / "config" / "airflow-pools.json"))  # as make airflow-setup
        self.lake = schema.Lake.at(self.home / "lake")

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        airflow = Path(sys.executable).with_name("airflow")
        proc = subprocess.run(
            [str(airflow), *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=900
        )
        if check and proc.returncode:
            raise AssertionError(
                f"airflow {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def dags_test(self, dag_id: str, ds: str, **params: object) -> Run:
        conf = {"dataset": "tiny", "profile": "tiny", "config": str(self.source_config), **params}
        proc = self.airflow("dags", "test", dag_id, ds, "-c", json.dumps(conf), check=False)
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
        links = sorted(p for p in folder.iterdir() if p.is_symlink()) if folder.is_dir() else []
        for link in links:
            version = current_version(link)
            files = {f.name: f.read_bytes() for f in sorted(version.iterdir()) if f.is_file()}
            state[f"{table}/{link.name}"] = (os.readlink(link), files)
    return state


def read_rows(lake: schema.Lake, ds: str):
    return pq.read_table(lake.recommendations(ds)).sort_by([("user_id", "ascending"), ("rank", "ascending")])

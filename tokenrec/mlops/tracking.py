"""MLflow tracking of retrains: one parent run per retrain, one child run per stage, and what each one holds.

One experiment (``cfg.mlflow.experiment``, artifact root set explicitly) holds one *parent* run per retrain,
named by the retrain id (``ml100k-2026-11-27``) and tagged ``tokenrec.retrain_id``, and under it one *child*
run per stage (``train-gnn``, ``train-tokenizer``, ``train-llm``, ``evaluate``, ``package``, ``register``).
Each stage runs in its own process (an Airflow task): :func:`stage_run` finds the parent by its tag (creating
it on first use) and opens a new child; :func:`log_stage` does that and logs the stage folder: the resolved
config as params, the git commit and input snapshot as tags, ``history.json`` as ``epoch.<key>`` metrics
(step = epoch), ``metrics.json`` and ``stats.json`` as final metrics (copied to the parent as
``<stage>.<key>``), the folder as artifacts and PNG plots (:mod:`tokenrec.mlops.plots`) under ``plots/``.

Status of the parent. It is RUNNING while stages run. ``promote``, the retrain's last task, ends it
FINISHED (:func:`end_retrain`, also when the gate rejects the model: a rejection is an outcome, not a
failure). A stage that raises inside :func:`failing_retrain` ends it FAILED with the tags
``tokenrec.failed_stage`` and ``tokenrec.error``; the next stage that starts (an Airflow retry, a cleared
task) sets it back to RUNNING.

Reruns. Rerunning a stage of the same retrain creates a new child run; when it succeeds it gets the tag
``tokenrec.current=true`` and the children it replaces get ``tokenrec.current=false`` and
``tokenrec.superseded_by=<new run id>``. A failed rerun ends FAILED and leaves the previous result
current. So ``tags.tokenrec.current = 'true'`` selects one run per (retrain, stage); nothing is overwritten.

Names. MLflow allows only ``[/\\w.\\- :]`` in metric, param and tag keys, so ``@`` becomes ``_at_``
(``tokenrec.valid.NDCG@20`` -> ``tokenrec.valid.NDCG_at_20``), other characters ``_`` (:func:`mlflow_key`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenrec.config import Config
from tokenrec.errors import TokenrecError
from tokenrec.run_folder import HISTORY_FILE, METRICS_FILE, STATS_FILE
from tokenrec.storage import read_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is first imported: no network

log = logging.getLogger(__name__)

TAG_RETRAIN = "tokenrec.retrain_id"
TAG_ROLE = "tokenrec.role"  # "retrain" on the parent, "stage" on a child
TAG_STAGE = "tokenrec.stage"
TAG_CURRENT = "tokenrec.current"
TAG_SUPERSEDED_BY = "tokenrec.superseded_by"
TAG_FAILED_STAGE = "tokenrec.failed_stage"
TAG_ERROR = "tokenrec.error"
_MAX_PARAM = 6000  # MLflow's limits: param value length, key length, entities per log_batch call
_MAX_KEY = 250
_MAX_TAG = 5000
_BATCH = 100
_NOT_METRICS = {"protocol", "dataset", "epoch", "version"}  # numbers that are not measurements
_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


class RegistryError(TokenrecError):
    """A tracking or registry call cannot proceed: an alias or version that does not exist, a bad run id."""


def tracking_uri(cfg: Config) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<home>/mlflow/mlflow.db``."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path(cfg.paths.home).resolve() / 'mlflow' / 'mlflow.db'}"


def store_exists(cfg: Config) -> bool:
    """False only for a SQLite store whose file does not exist yet (nothing was ever logged there)."""
    uri = tracking_uri(cfg)
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def artifact_location(cfg: Config) -> str:
    """The experiment's artifact root as a URI (default ``file://<home>/mlflow/artifacts``)."""
    location = cfg.mlflow.artifact_location or str(Path(cfg.paths.home) / "mlflow" / "artifacts")
    return location if "://" in location else Path(location).resolve().as_uri()


@contextlib.contextmanager
def _environment_kept(*names: str) -> Iterator[None]:
    """Undo whatever the block does to the environment variables ``names`` (set, changed or removed)."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(cfg: Config) -> tuple[Any, str]:
    """Point MLflow (also its fluent API) at the configured store; return ``(MlflowClient, experiment_id)``.

    Creates the experiment with an explicit artifact location when it does not exist yet.
    """
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with _environment_kept("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mlflow.set_tracking_uri(uri)  # MLflow also exports these: the next config in this process would inherit
        mlflow.set_registry_uri(uri)  # this store through tracking_uri()'s $MLFLOW_TRACKING_URI fallback
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # lost a creation race: fine
            client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location(cfg))
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    elif experiment.artifact_location != artifact_location(cfg):
        log.warning(
            "experiment %s keeps its artifact root %s (config asks %s)",
            experiment.name,
            experiment.artifact_location,
            artifact_location(cfg),
        )
    return client, experiment.experiment_id


def retrain_run(cfg: Config, retrain_id: str, snapshot: str | os.PathLike[str] | None = None) -> str:
    """The run id of the parent run of ``retrain_id``, created on first use.

    When two processes create it at once, the older run wins and the younger deletes its own.
    """
    return _parent(cfg, retrain_id, snapshot).info.run_id


def end_retrain(
    cfg: Config,
    retrain_id: str,
    status: str = "FINISHED",
    tags: dict[str, str] | None = None,
    snapshot: str | os.PathLike[str] | None = None,
) -> str:
    """End the parent run of ``retrain_id`` as ``FINISHED`` or ``FAILED`` with ``tags``; return its run id.

    ``promote`` (the retrain's last task) ends it FINISHED; :func:`failing_retrain` ends it FAILED. The
    parent is created (with ``snapshot`` as its input tag) when no stage has logged yet.
    """
    if status not in ("FINISHED", "FAILED"):
        raise ValueError(f"a retrain ends FINISHED or FAILED, not {status!r}")
    client, _ = connect(cfg)
    run_id = retrain_run(cfg, retrain_id, snapshot)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, _clip(value, _MAX_TAG))
    client.set_terminated(run_id, status=status)
    log.info("mlflow: retrain %s (run %s) ended %s", retrain_id, run_id, status)
    return run_id


@contextlib.contextmanager
def failing_retrain(
    cfg: Config, retrain_id: str, stage: str, snapshot: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Inside the block, an exception ends the retrain's parent run FAILED (naming ``stage``) and propagates.

    A no-op when ``mlflow.enabled`` is false. Recording the failure never hides it: if the store cannot
    be reached either, that is logged and the stage's own exception is raised.
    """
    if not cfg.mlflow.enabled:
        yield
        return
    try:
        yield
    except Exception as exc:
        try:
            failure = {TAG_FAILED_STAGE: stage, TAG_ERROR: f"{type(exc).__name__}: {exc}"}
            end_retrain(cfg, retrain_id, "FAILED", failure, snapshot)
        except Exception:  # noqa: BLE001 - the stage's own error is the one to report
            log.exception("mlflow: could not mark retrain %s FAILED after %s failed", retrain_id, stage)
        raise


@contextlib.contextmanager
def stage_run(
    cfg: Config, retrain_id: str, stage: str, snapshot: str | os.PathLike[str] | None = None
) -> Iterator[Any]:
    """A new child run ``stage`` of retrain ``retrain_id``, active for ``mlflow.log_*`` inside the block.

    An ended parent (FAILED after an earlier attempt, FINISHED before a stage was rerun) is set RUNNING
    again. On success the run becomes the current one of its stage and earlier ones are tagged superseded;
    an exception ends it FAILED and propagates.

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    import mlflow

    _check_id(stage)
    parent = _parent(cfg, retrain_id, snapshot)
    client, experiment_id = connect(cfg)
    if parent.info.status != "RUNNING":
        client.update_run(parent.info.run_id, status="RUNNING")
    tags = {
        TAG_RETRAIN: retrain_id,
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_CURRENT: "false",
        "tokenrec.config_hash": cfg.hash(),
        **_provenance(cfg, snapshot),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=stage, parent_run_id=parent.info.run_id, tags=tags
    ) as run:
        yield run
        run_id = run.info.run_id
        earlier = f"tags.`{TAG_RETRAIN}` = '{retrain_id}' and tags.`{TAG_STAGE}` = '{stage}'"
        for old in _search(client, experiment_id, f"{earlier} and tags.`{TAG_CURRENT}` = 'true'"):
            client.set_tag(old.info.run_id, TAG_CURRENT, "false")
            client.set_tag(old.info.run_id, TAG_SUPERSEDED_BY, run_id)
        client.set_tag(run_id, TAG_CURRENT, "true")


def log_stage(
    cfg: Config,
    retrain_id: str,
    stage: str,
    stage_dir: str | os.PathLike[str],
    snapshot: str | os.PathLike[str] | None = None,
) -> str | None:
    """Log a finished stage folder as a new child run of the retrain; return its run id (None if disabled).

    Logs the flattened config (params), ``history.json`` (metrics ``epoch.<key>``, step = epoch),
    ``metrics.json`` and ``stats.json`` (final metrics, copied to the parent as ``<stage>.<key>``), the
    folder minus ``cfg.mlflow.artifact_exclude`` (artifacts) and the plots of
    :func:`tokenrec.mlops.plots.stage_plots` (``plots/``).
    """
    if not cfg.mlflow.enabled:
        return None
    from mlflow.entities import Metric, Param

    from tokenrec.mlops import plots

    stage_dir = Path(stage_dir)
    started = time.perf_counter()
    with stage_run(cfg, retrain_id, stage, snapshot) as run:
        client, _ = connect(cfg)
        run_id, parent_id = run.info.run_id, run.data.tags["mlflow.parentRunId"]
        params = [
            Param(_key(k), _clip(v, _MAX_PARAM))
            for k, v in flatten(cfg.to_dict(), numbers_only=False).items()
        ]
        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for step, k, v in _history_metrics(stage_dir / HISTORY_FILE)]
        final: dict[str, float] = {}
        for name in (METRICS_FILE, STATS_FILE):
            if (stage_dir / name).is_file():
                prefix = "" if name == METRICS_FILE else "stats."
                final.update({prefix + k: v for k, v in flatten(read_json(stage_dir / name)).items()})
        metrics += [Metric(_key(k), v, now, 0) for k, v in final.items()]
        _log_batches(client, run_id, metrics=metrics, params=params)
        _log_batches(
            client, parent_id, metrics=[Metric(_key(f"{stage}.{k}"), v, now, 0) for k, v in final.items()]
        )
        for entry in sorted(stage_dir.iterdir()):
            if entry.name in cfg.mlflow.artifact_exclude or entry.name.startswith("."):
                continue
            if entry.is_dir():
                client.log_artifacts(run_id, str(entry), artifact_path=entry.name)
            else:
                client.log_artifact(run_id, str(entry))
        with tempfile.TemporaryDirectory() as tmp:
            for png in plots.stage_plots(stage_dir, Path(tmp), stage):
                client.log_artifact(run_id, str(png), artifact_path="plots")
    log.info(
        "mlflow: logged %s of %s as run %s in %.1f s",
        stage,
        retrain_id,
        run_id,
        time.perf_counter() - started,
    )
    return run_id


# ------------------------------------------------------------------------------------------------- helpers


def flatten(tree: Any, prefix: str = "", numbers_only: bool = True) -> dict[str, Any]:
    """``{"tokenrec": {"valid": {"HR@20": x}}}`` -> ``{"tokenrec.valid.HR@20": x}``.

    With ``numbers_only`` (metrics) non-numeric leaves and the keys ``protocol``/``dataset``/``epoch``/
    ``version`` are dropped, numeric lists become ``key.0``, ``key.1``, ... and booleans 0/1; otherwise
    (params) every leaf is kept and lists are JSON text.
    """
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if numbers_only and key in _NOT_METRICS:
                continue
            out.update(flatten(value, f"{prefix}{key}.", numbers_only))
    elif isinstance(tree, list | tuple) and numbers_only:
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}.", numbers_only))
    elif not numbers_only:
        out[prefix[:-1]] = json.dumps(tree) if isinstance(tree, list | tuple) else str(tree)
    elif isinstance(tree, int | float):
        out[prefix[:-1]] = float(tree)
    return out


def mlflow_key(name: str) -> str:
    """A metric/param/tag key MLflow accepts: ``@`` -> ``_at_``, other disallowed characters -> ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def git_commit() -> str:
    """``git rev-parse HEAD`` of the tokenrec checkout, or ``unknown`` (installed package, no git)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _parent(cfg: Config, retrain_id: str, snapshot: str | os.PathLike[str] | None) -> Any:
    client, experiment_id = connect(cfg)
    _check_id(retrain_id)
    query = f"tags.`{TAG_RETRAIN}` = '{retrain_id}' and tags.`{TAG_ROLE}` = 'retrain'"
    found = _search(client, experiment_id, query)
    if found:
        return found[0]
    tags = {TAG_RETRAIN: retrain_id, TAG_ROLE: "retrain", **_provenance(cfg, snapshot)}
    created = client.create_run(experiment_id, run_name=retrain_id, tags=tags).info.run_id
    winner = _search(client, experiment_id, query)[0]
    if winner.info.run_id != created:
        client.delete_run(created)
    log.info("mlflow: parent run %s for retrain %s", winner.info.run_id, retrain_id)
    return winner


def _provenance(cfg: Config, snapshot: str | os.PathLike[str] | None) -> dict[str, str]:
    path = str(snapshot) if snapshot else ""
    date = re.search(r"snapshot_date=([0-9-]+)", path)
    return {
        "tokenrec.git_commit": git_commit(),
        "tokenrec.snapshot": path,
        "tokenrec.snapshot_date": date.group(1) if date else "",
        "tokenrec.dataset": cfg.source.dataset,
    }


def _history_metrics(path: Path) -> Iterator[tuple[int, str, float]]:
    """``(epoch, "epoch.<key>", value)`` of every number of a ``history.json`` (list, or ``{entity: list}``).

    The ``epoch.`` prefix keeps per-epoch curves apart from the final metrics, which reuse names such as
    ``valid.NDCG@20``.
    """
    if not path.is_file():
        return
    history = read_json(path)
    groups = history if isinstance(history, dict) else {"": history}
    for entity, records in groups.items():
        for i, record in enumerate(records):
            step = int(record.get("epoch", i + 1))
            for key, value in flatten(record, f"epoch.{entity}." if entity else "epoch.").items():
                yield step, key, value


def _log_batches(client: Any, run_id: str, metrics: Sequence[Any] = (), params: Sequence[Any] = ()) -> None:
    for i in range(0, len(params), _BATCH):
        client.log_batch(run_id, params=params[i : i + _BATCH])
    for i in range(0, len(metrics), 10 * _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + 10 * _BATCH])


def _search(client: Any, experiment_id: str, query: str) -> list[Any]:
    return client.search_runs(
        [experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1000
    )


def _key(name: str) -> str:
    return mlflow_key(name)[:_MAX_KEY]


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _check_id(value: str) -> None:
    if not _ID_PATTERN.match(value):
        raise RegistryError(
            f"retrain and stage ids may hold only letters, digits, '.', '_' and '-'; got {value!r}"
        )

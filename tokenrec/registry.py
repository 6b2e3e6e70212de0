"""MLflow: tracking of retrain runs, model registration, aliases and the promotion gate.

Tracking. One experiment (``cfg.mlflow.experiment``, artifact root set explicitly) holds one *parent* run
per retrain, named by the retrain id (``ml100k-2026-11-27``) and tagged ``tokenrec.retrain_id``, and under
it one *child* run per stage (``train-gnn``, ``train-tokenizer``, ``train-llm``, ``evaluate``, ...). Each
stage runs in its own process (an Airflow task): :func:`stage_run` finds the parent by its tag (creating
it on first use) and opens a new child; :func:`log_stage` does that and logs the stage folder: the resolved
config as params, the git commit and input snapshot as tags, ``history.json`` as ``epoch.<key>`` metrics
(step = epoch), ``metrics.json`` and ``stats.json`` as final metrics (copied to the parent as
``<stage>.<key>``), the folder as artifacts and PNG plots (:mod:`tokenrec.plots`) under ``plots/``.

Reruns. Rerunning a stage of the same retrain creates a new child run; when it succeeds it gets the tag
``tokenrec.current=true`` and the children it replaces get ``tokenrec.current=false`` and
``tokenrec.superseded_by=<new run id>``. A failed rerun ends FAILED and leaves the previous result
current. So ``tags.tokenrec.current = 'true'`` selects one run per (retrain, stage); nothing is overwritten.

Names. MLflow allows only ``[/\\w.\\- :]`` in metric, param and tag keys, so ``@`` becomes ``_at_``
(``tokenrec.valid.NDCG@20`` -> ``tokenrec.valid.NDCG_at_20``), other characters ``_`` (:func:`mlflow_key`).

Registry and gate. :func:`register` creates a version of ``cfg.mlflow.registered_model``, points the
``challenger`` alias at it and stores the evaluation metrics (``metric.<key>``), tokenizer hash, retrain
id and evaluation snapshot as version tags. :func:`promote` moves ``champion`` to a version only when both
were evaluated on the same snapshot and :func:`gate_decision` passes; otherwise the version gets the tag
``rejected``. Aliases, not the deprecated stages, mark versions; :func:`resolve_alias` resolves one once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tokenrec.config import Config
from tokenrec.errors import TokenrecError
from tokenrec.storage import read_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is first imported: no network

log = logging.getLogger(__name__)

TAG_RETRAIN = "tokenrec.retrain_id"
TAG_ROLE = "tokenrec.role"  # "retrain" on the parent, "stage" on a child
TAG_STAGE = "tokenrec.stage"
TAG_CURRENT = "tokenrec.current"
TAG_SUPERSEDED_BY = "tokenrec.superseded_by"
CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG_PREFIX = "metric."
_MAX_PARAM = 6000  # MLflow's limits: param value length, key length, entities per log_batch call
_MAX_KEY = 250
_BATCH = 100
_NOT_METRICS = {"protocol", "dataset", "epoch"}
_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


class RegistryError(TokenrecError):
    """A tracking or registry call cannot proceed: an alias or version that does not exist, a bad run id."""


class AliasTarget(NamedTuple):
    """What an alias pointed to when it was resolved."""

    name: str
    version: int
    run_id: str | None
    tags: dict[str, str]


@dataclass
class Decision:
    """Outcome of the promotion gate: ``passed`` and one reason per gated metric (or one blocking reason)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


# ------------------------------------------------------------------------------------------------ tracking


def tracking_uri(cfg: Config) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<home>/mlflow/mlflow.db``."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path(cfg.paths.home).resolve() / 'mlflow' / 'mlflow.db'}"


def artifact_location(cfg: Config) -> str:
    """The experiment's artifact root as a URI (default ``file://<home>/mlflow/artifacts``)."""
    location = cfg.mlflow.artifact_location or str(Path(cfg.paths.home) / "mlflow" / "artifacts")
    return location if "://" in location else Path(location).resolve().as_uri()


def connect(cfg: Config) -> tuple[Any, str]:
    """Point MLflow (also its fluent API) at the configured store; return ``(MlflowClient, experiment_id)``.

    Creates the experiment with an explicit artifact location when it does not exist yet.
    """
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
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
    client, experiment_id = connect(cfg)
    _check_id(retrain_id)
    query = f"tags.`{TAG_RETRAIN}` = '{retrain_id}' and tags.`{TAG_ROLE}` = 'retrain'"
    found = _search(client, experiment_id, query)
    if found:
        return found[0].info.run_id
    tags = {TAG_RETRAIN: retrain_id, TAG_ROLE: "retrain", **_provenance(cfg, snapshot)}
    created = client.create_run(experiment_id, run_name=retrain_id, tags=tags).info.run_id
    winner = _search(client, experiment_id, query)[0].info.run_id
    if winner != created:
        client.delete_run(created)
    log.info("mlflow: parent run %s for retrain %s", winner, retrain_id)
    return winner


def end_retrain(cfg: Config, retrain_id: str, status: str = "FINISHED") -> None:
    """Mark the parent run of ``retrain_id`` ``FINISHED`` or ``FAILED`` (the DAG's last task calls this)."""
    client, _ = connect(cfg)
    client.set_terminated(retrain_run(cfg, retrain_id), status=status)


@contextlib.contextmanager
def stage_run(
    cfg: Config, retrain_id: str, stage: str, snapshot: str | os.PathLike[str] | None = None
) -> Iterator[Any]:
    """A new child run ``stage`` of retrain ``retrain_id``, active for ``mlflow.log_*`` inside the block.

    On success the run becomes the current one of its stage and earlier ones are tagged superseded; an
    exception ends it FAILED and propagates.

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    import mlflow

    _check_id(stage)
    parent = retrain_run(cfg, retrain_id, snapshot)
    client, experiment_id = connect(cfg)
    tags = {
        TAG_RETRAIN: retrain_id,
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_CURRENT: "false",
        "tokenrec.config_hash": cfg.hash(),
        **_provenance(cfg, snapshot),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=stage, parent_run_id=parent, tags=tags
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
    folder minus ``cfg.mlflow.artifact_exclude`` (artifacts) and the plots of :mod:`tokenrec.plots`
    (``plots/``).
    """
    if not cfg.mlflow.enabled:
        return None
    from mlflow.entities import Metric, Param

    from tokenrec import plots

    stage_dir = Path(stage_dir)
    started = time.perf_counter()
    with stage_run(cfg, retrain_id, stage, snapshot) as run:
        client, _ = connect(cfg)
        run_id, parent_id = run.info.run_id, run.data.tags["mlflow.parentRunId"]
        params = [Param(_key(k), _truncate(v)) for k, v in flatten(cfg.to_dict(), numbers_only=False).items()]
        now = int(time.time() * 1000)
        metrics = [
            Metric(_key(k), v, now, step) for step, k, v in _history_metrics(stage_dir / "history.json")
        ]
        final: dict[str, float] = {}
        for name in ("metrics.json", "stats.json"):
            if (stage_dir / name).is_file():
                prefix = "" if name == "metrics.json" else "stats."
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
            for png in _stage_plots(stage_dir, Path(tmp), stage, plots):
                client.log_artifact(run_id, str(png), artifact_path="plots")
    log.info(
        "mlflow: logged %s of %s as run %s in %.1f s",
        stage,
        retrain_id,
        run_id,
        time.perf_counter() - started,
    )
    return run_id


# ------------------------------------------------------------------------------------------------ registry


def register(
    cfg: Config,
    retrain_id: str,
    model_uri_or_artifact_path: str | os.PathLike[str],
    metrics: dict[str, Any],
    tokenizer_hash: str,
    eval_snapshot: str | None = None,
) -> int:
    """Register a model as a new version of ``cfg.mlflow.registered_model`` and make it the ``challenger``.

    Args:
        cfg: the resolved configuration.
        retrain_id: the retrain the model comes from (its parent run gives the default ``eval_snapshot``).
        model_uri_or_artifact_path: an MLflow model URI (``runs:/<id>/model``, ``models:/m-...``, ...) or a
            local MLflow model folder (it is first copied into a child run ``register`` of the retrain, so the
            version never points at a temporary folder).
        metrics: evaluation metrics, nested like ``eval/metrics.json``; stored flattened as version tags.
        tokenizer_hash: identifies the ID tokenizer the model was trained with.
        eval_snapshot: the snapshot the metrics were computed on; default the retrain's snapshot tag.

    Returns:
        The new version number.
    """
    import mlflow

    client, _ = connect(cfg)
    if eval_snapshot is None:
        eval_snapshot = client.get_run(retrain_run(cfg, retrain_id)).data.tags.get("tokenrec.snapshot", "")
    uri = str(model_uri_or_artifact_path)
    if Path(uri).is_dir():
        with stage_run(cfg, retrain_id, "register") as run:
            client.log_artifacts(run.info.run_id, uri, artifact_path="model")
        uri = f"runs:/{run.info.run_id}/model"
    tags = {"retrain_id": retrain_id, "tokenizer_hash": tokenizer_hash, "eval_snapshot": eval_snapshot}
    tags.update({metric_tag(k): repr(v) for k, v in flatten(metrics).items()})
    version = mlflow.register_model(uri, cfg.mlflow.registered_model, tags=tags)
    client.set_registered_model_alias(cfg.mlflow.registered_model, CHALLENGER, version.version)
    log.info("registered %s version %s from %s as %s", version.name, version.version, uri, CHALLENGER)
    return int(version.version)


def resolve_alias(cfg: Config, alias: str) -> AliasTarget:
    """Resolve ``alias`` once: ``(name, version, run_id, tags)``. Raises RegistryError when it is not set."""
    import mlflow

    client, _ = connect(cfg)
    name = cfg.mlflow.registered_model
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(
            f"registered model {name!r} has no version with alias {alias!r} in {tracking_uri(cfg)}; "
            "run the retrain DAG (register, promote) first"
        ) from exc
    return AliasTarget(name, int(version.version), version.run_id, dict(version.tags))


def promote(cfg: Config, version: int | str | None = None) -> Decision:
    """Move ``champion`` to ``version`` (default: the ``challenger``) if the promotion gate passes.

    The first version becomes champion when there is none. Otherwise both versions must carry the same
    ``eval_snapshot`` tag and every metric of ``cfg.mlflow.gated_metrics`` must pass :func:`gate_decision`.
    The decision is stored on the version as tags ``gate_passed``, ``gate_reason``, ``compared_with``; a
    failed gate also sets ``rejected`` (the reason) and leaves ``champion`` where it was.
    """
    import mlflow

    client, _ = connect(cfg)
    name, m = cfg.mlflow.registered_model, cfg.mlflow
    if version is None:
        version = resolve_alias(cfg, CHALLENGER).version
    try:
        tags = dict(client.get_model_version(name, str(version)).tags)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(
            f"registered model {name!r} has no version {version} in {tracking_uri(cfg)}"
        ) from exc
    try:
        champion: AliasTarget | None = resolve_alias(cfg, CHAMPION)
    except RegistryError:
        champion = None
    if champion is None:
        decision = Decision(True, ["first version: there was no champion"])
    elif champion.version == int(version):
        decision = Decision(True, [f"version {version} is already the champion"])
    elif tags.get("eval_snapshot") != champion.tags.get("eval_snapshot"):
        decision = Decision(
            False,
            [
                f"evaluated on a different split: eval_snapshot {tags.get('eval_snapshot')!r} vs champion "
                f"{champion.tags.get('eval_snapshot')!r}; evaluate both on the same frozen snapshot"
            ],
        )
    else:
        decision = gate_decision(
            _gated(tags, cfg),
            _gated(champion.tags, cfg),
            m.gated_metrics,
            m.min_abs_improvement,
            m.min_rel_improvement,
        )
    compared = str(champion.version) if champion else "none"
    for key, value in {
        "gate_passed": str(decision.passed).lower(),
        "gate_reason": decision.reason,
        "compared_with": compared,
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    if decision.passed:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        if "rejected" in tags:
            client.delete_model_version_tag(name, str(version), "rejected")
        log.info("promoted %s version %s to %s: %s", name, version, CHAMPION, decision.reason)
    else:
        client.set_model_version_tag(name, str(version), "rejected", decision.reason)
        log.warning(
            "%s version %s not promoted (champion stays %s): %s", name, version, compared, decision.reason
        )
    return decision


def gate_decision(
    challenger: dict[str, float],
    champion: dict[str, float],
    gated: list[str],
    abs_margin: float,
    rel_margin: float,
) -> Decision:
    """Pass only if every gated metric satisfies challenger >= champion + max(abs, rel * |champion|).

    Higher is better for every gated metric. A metric missing on either side, or NaN on either side, fails the
    gate: without both numbers there is no evidence of an improvement (re-evaluate the champion, or remove the
    metric from ``mlflow.gated_metrics``). An empty ``gated`` list fails too. Values within float rounding of
    the required one (relative 1e-9) count as equal, so that 0.105 clears 0.1 + 0.005.
    """
    if not gated:
        return Decision(False, ["no gated metrics configured"])
    reasons, passed = [], True
    for name in gated:
        new, old = challenger.get(name), champion.get(name)
        if new is None or old is None:
            side = "challenger" if new is None else "champion"
            reasons.append(f"{name}: missing on the {side}")
            passed = False
            continue
        if math.isnan(new) or math.isnan(old):
            reasons.append(f"{name}: NaN (challenger {new}, champion {old})")
            passed = False
            continue
        required = old + max(abs_margin, rel_margin * abs(old))
        ok = new >= required or math.isclose(new, required, rel_tol=1e-9, abs_tol=1e-12)  # float noise
        passed &= ok
        reasons.append(
            f"{name}: {new:.6g} {'>=' if ok else '<'} required {required:.6g} (champion {old:.6g})"
        )
    return Decision(passed, reasons)


# ------------------------------------------------------------------------------------------------- helpers


def flatten(tree: Any, prefix: str = "", numbers_only: bool = True) -> dict[str, Any]:
    """``{"tokenrec": {"valid": {"HR@20": x}}}`` -> ``{"tokenrec.valid.HR@20": x}``.

    With ``numbers_only`` (metrics) non-numeric leaves and the keys ``protocol``/``dataset``/``epoch`` are
    dropped, numeric lists become ``key.0``, ``key.1``, ... and booleans 0/1; otherwise (params) every leaf is
    kept and lists are JSON text.
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


def metric_tag(name: str) -> str:
    """The version tag of metric ``name``: ``tokenrec.valid.HR@20`` -> ``metric.tokenrec.valid.HR_at_20``."""
    return mlflow_key(METRIC_TAG_PREFIX + name)


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


def _gated(tags: dict[str, str], cfg: Config) -> dict[str, float]:
    values = {}
    for name in cfg.mlflow.gated_metrics:
        raw = tags.get(metric_tag(f"{cfg.mlflow.gated_model}.{name}"))
        if raw is not None:
            values[name] = float(raw)
    return values


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


def _stage_plots(stage_dir: Path, tmp: Path, stage: str, plots: Any) -> list[Path]:
    made = []
    if (stage_dir / "history.json").is_file():
        made.append(
            plots.plot_training_curves(stage_dir / "history.json", tmp / "training_curves.png", stage)
        )
    if (stage_dir / "metrics.json").is_file():
        document = read_json(stage_dir / "metrics.json")
        if any(isinstance(v, dict) and isinstance(v.get("valid"), dict) for v in document.values()):
            made.append(plots.plot_model_metrics(document, tmp / "metrics_valid.png", "valid"))
    if (stage_dir / "stats.json").is_file():
        made.append(plots.plot_codebook_usage(stage_dir / "stats.json", tmp / "codebook_usage.png"))
    return made


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


def _truncate(value: str) -> str:
    return value if len(value) <= _MAX_PARAM else value[: _MAX_PARAM - 3] + "..."


def _check_id(value: str) -> None:
    if not _ID_PATTERN.match(value):
        raise RegistryError(
            f"retrain and stage ids may hold only letters, digits, '.', '_' and '-'; got {value!r}"
        )

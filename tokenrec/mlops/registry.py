"""MLflow model registry: versions, the ``champion``/``challenger`` aliases and the promotion gate.

Registration. :func:`register` creates a version of ``cfg.mlflow.registered_model``, points ``challenger``
at it and stores as version tags: ``retrain_id``, ``tokenizer_hash``, ``eval_snapshot`` and every number of
the retrain's ``eval/metrics.json`` as ``metric.<model>.<split>.<name>`` (``@`` written ``_at_``). That file
also holds the champion of the time, scored by ``evaluate`` on the challenger's own split
(:mod:`tokenrec.tasks.evaluate`), so its numbers land next to the challenger's as ``metric.champion.*``,
with ``eval_champion_version`` (the version scored, ``none`` when there was no champion) and, when it could
not be scored, ``eval_champion_error``.

Gate. :func:`promote` moves ``champion`` to a version only if every metric of ``mlflow.gated_metrics`` of
``mlflow.gated_model`` (default ``tokenrec``, validation NDCG@20 and HR@20) clears the champion's value *as
measured on the challenger's split* plus the margin (:func:`gate_decision`). Two versions trained on
different snapshots are therefore compared on one split, the newer one's, with the same exclusions. The
first version becomes champion when there is none. Without comparable champion numbers (the evaluation
found another champion, or none, or could not score it; a metric is missing) the gate fails and says
why. The outcome is stored on the version (``gate_passed``, ``gate_reason``, ``compared_with``, and on
failure ``rejected``). Aliases, not the deprecated stages, mark versions; :func:`resolve_alias` resolves
one once.

Rollback. :func:`rollback` moves ``champion`` back to an earlier version that passed the gate, with a reason
stored on both versions (``rolled_back`` on the one left, ``rollback_from``/``rollback_reason`` on the one
restored); :func:`versions` lists every version with its aliases, gate outcome and gated metrics
(``tokenrec models``, ``tokenrec rollback``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tokenrec.config import Config
from tokenrec.mlops.tracking import (
    RegistryError,
    connect,
    flatten,
    mlflow_key,
    retrain_run,
    stage_run,
    tracking_uri,
)

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG_PREFIX = "metric."
CHAMPION_ENTRY = "champion"  # the entry of eval/metrics.json holding the champion scored on the same split
TAG_EVAL_CHAMPION = "eval_champion_version"
TAG_EVAL_CHAMPION_ERROR = "eval_champion_error"
NO_CHAMPION = "none"


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
        metrics: evaluation metrics, nested like ``eval/metrics.json``; stored flattened as version tags,
            its ``champion`` entry (version, error) as ``eval_champion_version``/``eval_champion_error``.
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
    tags.update(_champion_tags(metrics.get(CHAMPION_ENTRY)))
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

    The first version becomes champion when there is none. Otherwise the version's evaluation must hold
    numbers of the current champion on the same split (``eval_champion_version`` equal to the champion's
    version, no ``eval_champion_error``), and every metric of ``cfg.mlflow.gated_metrics`` must pass
    :func:`gate_decision` against them. The decision is stored on the version as tags ``gate_passed``,
    ``gate_reason``, ``compared_with``; a failed gate also sets ``rejected`` (the reason) and leaves
    ``champion`` where it was.

    Raises:
        RegistryError: ``version`` does not exist (or, by default, there is no challenger).
    """
    import mlflow

    client, _ = connect(cfg)
    name = cfg.mlflow.registered_model
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
    else:
        decision = _compare(tags, champion.version, cfg)
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


def versions(cfg: Config) -> list[dict[str, Any]]:
    """Every version of the registered model, newest first: aliases, gate outcome, gated metrics, notes."""
    import mlflow

    client, _ = connect(cfg)
    name = cfg.mlflow.registered_model
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"no registered model {name!r} in {tracking_uri(cfg)}; run the retrain first") from exc
    rows = []
    for entry in client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"]):
        tags = dict(entry.tags)
        shown = [*cfg.mlflow.gated_metrics, *("test." + m.split(".", 1)[1] for m in cfg.mlflow.gated_metrics)]
        metrics = {m: tags.get(metric_tag(f"{cfg.mlflow.gated_model}.{m}")) for m in dict.fromkeys(shown)}
        rows.append({
            "version": int(entry.version),
            "aliases": sorted(aliases.get(str(entry.version), [])),
            "retrain_id": tags.get("retrain_id"),
            "eval_snapshot": tags.get("eval_snapshot"),
            "gate_passed": tags.get("gate_passed"),
            "gate_reason": tags.get("gate_reason"),
            "metrics": {k: float(v) for k, v in metrics.items() if v is not None},
            "notes": {k: tags[k] for k in ("rejected", "rolled_back", "rollback_reason") if k in tags},
        })
    return rows


def rollback(cfg: Config, version: int, reason: str) -> dict[str, Any]:
    """Move ``champion`` back to ``version``, a version that passed the gate; record why on both versions.

    Nightly runs from then on serve ``version``; outputs already published keep the version recorded in their
    manifests (a rerun of such a date reuses it).

    Raises:
        RegistryError: no reason given, ``version`` does not exist or never passed the gate, or there is no
            champion to roll back from.
    """
    import datetime as dt

    import mlflow

    if not reason.strip():
        raise RegistryError("a rollback needs a reason (--reason '...'): it is stored on both versions")
    client, _ = connect(cfg)
    name = cfg.mlflow.registered_model
    current = resolve_alias(cfg, CHAMPION)
    try:
        tags = dict(client.get_model_version(name, str(version)).tags)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"registered model {name!r} has no version {version} in {tracking_uri(cfg)}") from exc
    if current.version == int(version):
        raise RegistryError(f"version {version} of {name!r} is already the champion; nothing to roll back")
    if tags.get("gate_passed") != "true":
        raise RegistryError(
            f"version {version} of {name!r} never passed the promotion gate (gate_passed={tags.get('gate_passed')}); "
            "roll back only to a version that was champion, or run `tokenrec promote` for it"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(current.version), "rolled_back", f"{stamp}: back to {version}: {reason}")
    client.set_model_version_tag(name, str(version), "rollback_from", str(current.version))
    client.set_model_version_tag(name, str(version), "rollback_reason", f"{stamp}: {reason}")
    log.warning("rolled %s champion back from version %s to %s: %s", name, current.version, version, reason)
    return {"model": name, "champion": int(version), "previous_champion": current.version, "reason": reason}


def gate_decision(
    challenger: dict[str, float],
    champion: dict[str, float],
    gated: list[str],
    abs_margin: float,
    rel_margin: float,
) -> Decision:
    """Pass only if every gated metric satisfies challenger >= champion + max(abs, rel * |champion|).

    Higher is better for every gated metric. A metric missing on either side, or NaN on either side, fails the
    gate: without both numbers there is no evidence of an improvement (re-evaluate, or remove the metric
    from ``mlflow.gated_metrics``). An empty ``gated`` list fails too. Values within float rounding of the
    required one (relative 1e-9) count as equal, so that 0.105 clears 0.1 + 0.005.
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


def metric_tag(name: str) -> str:
    """The version tag of metric ``name``: ``tokenrec.valid.HR@20`` -> ``metric.tokenrec.valid.HR_at_20``."""
    return mlflow_key(METRIC_TAG_PREFIX + name)


def _compare(tags: dict[str, str], champion: int, cfg: Config) -> Decision:
    """The gate for a challenger with version ``tags`` against champion version ``champion``."""
    measured = tags.get(TAG_EVAL_CHAMPION)
    missing = f"no metrics of champion version {champion} on the challenger's evaluation split"
    redo = "rerun evaluate and register for the challenger's retrain, then promote"
    if measured is None:
        return Decision(False, [f"{missing}: its eval/metrics.json has no champion entry; {redo}"])
    if measured == NO_CHAMPION:
        return Decision(False, [f"{missing}: there was no champion when it was evaluated; {redo}"])
    if measured != str(champion):
        return Decision(False, [f"{missing}: it was evaluated against version {measured}; {redo}"])
    if TAG_EVAL_CHAMPION_ERROR in tags:
        error = tags[TAG_EVAL_CHAMPION_ERROR]
        return Decision(
            False, [f"champion version {champion} could not be scored on the challenger's split: {error}"]
        )
    m = cfg.mlflow
    return gate_decision(
        _gated(tags, m.gated_model, m.gated_metrics),
        _gated(tags, CHAMPION_ENTRY, m.gated_metrics),
        m.gated_metrics,
        m.min_abs_improvement,
        m.min_rel_improvement,
    )


def _champion_tags(entry: Any) -> dict[str, str]:
    if not isinstance(entry, dict):
        return {}
    version = entry.get("version")
    tags = {TAG_EVAL_CHAMPION: NO_CHAMPION if version is None else str(version)}
    if entry.get("error"):
        tags[TAG_EVAL_CHAMPION_ERROR] = str(entry["error"])[:5000]
    return tags


def _gated(tags: dict[str, str], model: str, names: list[str]) -> dict[str, float]:
    values = {}
    for name in names:
        raw = tags.get(metric_tag(f"{model}.{name}"))
        if raw is not None:
            values[name] = float(raw)
    return values

"""Pipeline task ``promote``: move ``champion`` to the ``challenger`` only if the promotion gate passes.

A rejection is a normal outcome, not a failure: the task succeeds, the champion stays where it was, the
version is tagged ``rejected`` with the reason (:func:`tokenrec.mlops.registry.promote`), and the summary says why.

``promote`` is the retrain's last task, so it also ends the retrain's parent run in MLflow
(:func:`tokenrec.mlops.tracking.end_retrain`): FINISHED with the tags ``tokenrec.promoted`` (true/false),
``tokenrec.model_version`` and ``tokenrec.gate_reason``, or FAILED when the task itself fails (no
challenger, a challenger from another retrain, an unreachable store).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tokenrec.config import Config
from tokenrec.mlops import registry, tracking

log = logging.getLogger(__name__)


def run(cfg: Config, ds: str, run_dir: Path | None) -> dict[str, Any]:
    """Run the promotion gate on the current ``challenger`` and end the retrain's MLflow run.

    Args:
        cfg: the resolved configuration (``mlflow`` gate settings).
        ds: the logical date (recorded in the summary only).
        run_dir: the retrain's run folder; its name is the retrain id, and the challenger must come from
            that retrain. None: the retrain the challenger version was registered from.

    Returns:
        ``promoted`` (bool), ``version``, ``champion`` (the version holding the alias afterwards), ``reason``,
        ``retrain_id``.

    Raises:
        tokenrec.mlops.registry.RegistryError: there is no challenger, or it comes from another retrain than
            ``run_dir``'s.
    """
    challenger = registry.resolve_alias(cfg, registry.CHALLENGER)
    retrain_id = Path(run_dir).name if run_dir is not None else challenger.tags.get("retrain_id", "")
    if not retrain_id:
        raise registry.RegistryError(
            f"{challenger.name} version {challenger.version} has no retrain_id tag; pass --run-id"
        )
    with tracking.failing_retrain(cfg, retrain_id, "promote"):
        if challenger.tags.get("retrain_id") != retrain_id:
            raise registry.RegistryError(
                f"the challenger, {challenger.name} version {challenger.version}, comes from retrain "
                f"{challenger.tags.get('retrain_id')!r}, not {retrain_id!r}: register this retrain first "
                "(`tokenrec register`), or pass its --run-id"
            )
        decision = registry.promote(cfg, challenger.version)
        try:
            champion: registry.AliasTarget | None = registry.resolve_alias(cfg, registry.CHAMPION)
        except registry.RegistryError:  # the first version was rejected: still no champion
            champion = None
        if not decision.passed:
            log.warning("challenger version %d rejected: %s", challenger.version, decision.reason)
        outcome = {
            "tokenrec.promoted": str(decision.passed).lower(),
            "tokenrec.model_version": str(challenger.version),
            "tokenrec.gate_reason": decision.reason,
        }
        tracking.end_retrain(cfg, retrain_id, "FINISHED", outcome)
    return {
        "ds": ds,
        "model_name": challenger.name,
        "version": challenger.version,
        "promoted": decision.passed,
        "champion": champion.version if champion else None,
        "reason": decision.reason,
        "retrain_id": retrain_id,
    }

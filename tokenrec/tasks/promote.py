"""Pipeline task ``promote``: move ``champion`` to the ``challenger`` only if the promotion gate passes.

A rejection is a normal outcome, not a failure: the task succeeds, the champion stays where it was, the
version is tagged ``rejected`` with the reason (:func:`tokenrec.registry.promote`), and the summary says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tokenrec import registry
from tokenrec.config import Config

log = logging.getLogger(__name__)


def run(cfg: Config, ds: str, run_dir: Path | None) -> dict[str, Any]:
    """Run the promotion gate on the current ``challenger``.

    Args:
        cfg: the resolved configuration (``mlflow`` gate settings).
        ds: the logical date (recorded in the summary only).
        run_dir: unused; the challenger alias names the version.

    Returns:
        ``promoted`` (bool), ``version``, ``champion`` (the version holding the alias afterwards), ``reason``.

    Raises:
        tokenrec.registry.RegistryError: there is no challenger.
    """
    del run_dir
    challenger = registry.resolve_alias(cfg, registry.CHALLENGER)
    decision = registry.promote(cfg, challenger.version)
    try:
        champion: registry.AliasTarget | None = registry.resolve_alias(cfg, registry.CHAMPION)
    except registry.RegistryError:  # the first version was rejected: still no champion
        champion = None
    if not decision.passed:
        log.warning("challenger version %d rejected: %s", challenger.version, decision.reason)
    return {
        "ds": ds,
        "model_name": challenger.name,
        "version": challenger.version,
        "promoted": decision.passed,
        "champion": champion.version if champion else None,
        "reason": decision.reason,
    }

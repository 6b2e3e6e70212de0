"""Pipeline task ``publish``: make the validated, staged recommendations of a date visible, atomically.

Swaps ``recommendations/dt=<ds>`` to the staged version with one ``os.replace`` of a link
(:func:`tokenrec.storage.swap_partition`; RELIABILITY.md R4): readers see the previous complete output or the
new one. Only a version that passed ``validate_recommendations`` is published, and only if its data files
still have the SHA-256 the gate recorded. Other dates are never touched. Rerunning ``publish`` after a
success is a no-op for the data.

After the swap it writes the date's HTML report (:func:`tokenrec.reporting.report.write_report`: published beside the
output at ``<lake>/_reports/dt=<ds>/report.html`` and logged to MLflow). The report never holds back the data:
when it fails, the recommendations are already published and the task fails with a message saying so; its
retry (or ``tokenrec report --ds <ds>``) writes the report, and a page that did not change is not rewritten.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.errors import PublishError, TokenrecError
from tokenrec.storage import (
    current_version,
    file_sha256,
    is_published,
    read_json,
    staged_version,
    swap_partition,
)

log = logging.getLogger(__name__)


def run(cfg: Config, ds: str, run_dir: Path | None) -> dict[str, Any]:
    """Publish the staged recommendations of ``ds``.

    Args:
        cfg: the resolved configuration (``paths.lake``).
        ds: the logical date.
        run_dir: unused; kept for the common task signature.

    Returns:
        ``published`` (the version folder), ``changed`` (False when it was already published), the manifest,
        and ``report`` (the summary of :func:`tokenrec.reporting.report.write_report`).

    Raises:
        PublishError: nothing is staged and nothing is published, or the staged version has not passed the
            gate or changed since; the published version is left as it was. Also when the report fails
            after a successful swap (the message says the data is published).
    """
    del run_dir
    partition = schema.Lake.at(cfg.paths.lake).recommendations(ds)
    staged = staged_version(partition)
    if staged is None:
        if is_published(partition):
            version = current_version(partition)
            log.info("%s is already published (%s); nothing staged", partition, version.name)
            manifest = read_json(version / schema.MANIFEST_FILE)
            return {"published": str(version), "changed": False, **manifest, "report": _report(cfg, ds)}
        raise PublishError(
            f"nothing staged for {partition}; run batch_inference and validate_recommendations for {ds} first"
        )
    marker_path = staged / schema.VALIDATION_FILE
    if not marker_path.is_file():
        raise PublishError(
            f"staged version {staged.name} of {partition} has not passed validate_recommendations; run it "
            "(nothing was published, readers keep the previous output)"
        )
    marker = read_json(marker_path)
    present = {p.name for p in staged.glob("*.parquet") if not p.name.startswith(("_", "."))}
    if present != set(marker["files"]):
        raise PublishError(
            f"data files of {staged} changed after validate_recommendations passed ({sorted(present)} vs "
            f"{sorted(marker['files'])}); rerun batch_inference and validate_recommendations (nothing was "
            "published)"
        )
    for name, digest in marker["files"].items():
        path = staged / name
        if not path.is_file() or file_sha256(path) != digest:
            raise PublishError(
                f"{path} changed after validate_recommendations passed (SHA-256 differs); rerun "
                "batch_inference and validate_recommendations (nothing was published)"
            )
    swap_partition(partition, staged)
    manifest = read_json(staged / schema.MANIFEST_FILE)
    log.info("published %s -> %s (%d rows, model version %s)", partition, staged.name, manifest["rows"],
             manifest["model_version"])  # fmt: skip
    return {"published": str(staged), "changed": True, **manifest, "report": _report(cfg, ds)}


def _report(cfg: Config, ds: str) -> dict[str, Any]:
    """Write the report of the published date; a failure says that the data itself is published."""
    from tokenrec.reporting.report import write_report

    try:
        return write_report(cfg, ds)
    except TokenrecError as exc:
        raise PublishError(
            f"the recommendations for {ds} are published, but their report failed: {exc}. Fix that and rerun "
            f"this task or `tokenrec report --ds {ds}`"
        ) from exc

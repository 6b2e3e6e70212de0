"""Static HTML report of one nightly run: the page a person opens in a browser after ``tokenrec_nightly``.

``tokenrec report --ds D`` and the ``publish`` task (right after its swap) render one self-contained page
about the published ``recommendations/dt=D`` and publish it atomically
(:func:`tokenrec.storage.publish_partition`) at ``<lake>/_reports/dt=D/report.html``; it is also logged to
MLflow as ``reports/dt=D/report.html`` in the parent run of the retrain that produced the model. The page
(its numbers gathered by :mod:`tokenrec.reporting.facts`, laid out by :mod:`tokenrec.reporting.page`) shows:

- the model that wrote the lists and its evaluation metrics against the champion the promotion gate compared
  it with (version tags ``metric.*``, ``compared_with``, ``gate_passed``, ``gate_reason``), and every model of
  the retrain's ``eval/metrics.json``;
- training curves (``gnn/history.json``, ``llm/history.json``) and codebook usage (``tokenizer/stats.json``)
  of the retrain's run folder (``paths.runs/<retrain_id>``), drawn by :mod:`tokenrec.mlops.plots`;
- coverage and popularity with the definitions of ``sql/analytics/``: catalog coverage as
  ``fct_catalog_coverage_daily``, and the share of recommendations going to the 10 % most popular items as
  ``fct_popular_share`` with ``top_n`` = 10 % of the catalog, plus a histogram over popularity deciles;
- example users (the ones ``tokenrec show`` prints) with their latest interactions and their top 10, with
  titles where the data set has them.

Everything on the page is a function of the date's inputs (published output, snapshot, ID maps, run folder,
registry tags). Nothing reads the clock, and version folder names and timings are left out, so a rerun of a
date renders the same bytes (RELIABILITY.md R1) and an unchanged page is not published again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import TokenrecError
from tokenrec.reporting.facts import ModelFacts, example_users, model_facts, output_stats
from tokenrec.reporting.page import render_page
from tokenrec.reporting.show import titles
from tokenrec.run_folder import RunFolder
from tokenrec.storage import current_version, is_published, publish_partition, read_manifest

log = logging.getLogger(__name__)

REPORTS_TABLE = "_reports"
REPORT_FILE = "report.html"


class ReportError(TokenrecError):
    """The report of a date cannot be written (no published output for it)."""


def report_partition(lake: schema.Lake, ds: str) -> Path:
    """Where the report of ``ds`` is published: ``<lake>/_reports/dt=<ds>`` (holding ``report.html``)."""
    return lake.partition(REPORTS_TABLE, schema.DT_KEY, schema.parse_ds(ds).isoformat())


def write_report(cfg: Config, ds: str) -> dict[str, Any]:
    """Render the report of ``ds``, publish it atomically unless unchanged, and log it to MLflow.

    Args:
        cfg: the resolved configuration (``paths``, ``mlflow``).
        ds: the logical date of a published recommendations partition.

    Returns:
        ``report`` (the published file), ``changed`` (False when the same page was already published),
        ``sha256`` and ``mlflow_run_id`` (the retrain's parent run; None when MLflow is off or the retrain
        is unknown).

    Raises:
        ReportError: no recommendations are published for ``ds``.
    """
    lake = schema.Lake.at(cfg.paths.lake)
    if not is_published(lake.recommendations(ds)):
        raise ReportError(
            f"no published recommendations for {ds} at {lake.recommendations(ds)}; run the nightly DAG (or "
            f"`tokenrec batch-inference`, `validate-recommendations` and `publish --ds {ds}`) first"
        )
    page, facts = render_report(cfg, ds)
    digest = hashlib.sha256(page).hexdigest()
    partition = report_partition(lake, ds)
    changed = not (is_published(partition) and (partition / REPORT_FILE).read_bytes() == page)
    if changed:
        manifest = {
            "table": REPORTS_TABLE,
            "dt": ds,
            "sha256": digest,
            "bytes": len(page),
            "recommendations_version": current_version(lake.recommendations(ds)).name,
            "model_name": facts.name,
            "model_version": str(facts.version),
        }
        publish_partition(partition, lambda folder: _write_page(folder, page), manifest)
    log.info("report of %s: %s (%s)", ds, partition / REPORT_FILE, "published" if changed else "unchanged")
    run_id = _log_to_mlflow(cfg, ds, partition / REPORT_FILE, facts.retrain_id)
    return {
        "report": str(partition / REPORT_FILE),
        "changed": changed,
        "sha256": digest,
        "mlflow_run_id": run_id,
    }


def render_report(cfg: Config, ds: str) -> tuple[bytes, ModelFacts]:
    """The page of ``ds`` as UTF-8 bytes, and the facts about its model."""
    lake = schema.Lake.at(cfg.paths.lake)
    partition = lake.recommendations(ds)
    manifest = read_manifest(partition)
    recs = pq.read_table(partition, schema=schema.RECOMMENDATIONS)
    items_map, users_map = read_id_map(lake.id_map(schema.ITEMS)), read_id_map(lake.id_map(schema.USERS))
    data = InteractionData.load(lake.interactions(ds)) if is_published(lake.interactions(ds)) else None
    facts = model_facts(cfg, manifest["model_name"], int(manifest["model_version"]))
    run = RunFolder.at(cfg.paths.runs, facts.retrain_id) if facts.retrain_id else None
    page = render_page(
        cfg,
        ds,
        manifest,
        facts,
        run,
        output_stats(recs, items_map, data, ds),
        example_users(recs, users_map, items_map, data, titles(cfg)),
    )
    return page.encode("utf-8"), facts


def _write_page(folder: Path, page: bytes) -> None:
    folder.mkdir()
    (folder / REPORT_FILE).write_bytes(page)


def _log_to_mlflow(cfg: Config, ds: str, path: Path, retrain_id: str | None) -> str | None:
    """Log the page to the retrain's parent run as ``reports/dt=<ds>/report.html`` (same path on a rerun)."""
    if not cfg.mlflow.enabled or not retrain_id:
        return None
    from tokenrec.mlops import registry

    client, _ = registry.connect(cfg)
    run_id = registry.retrain_run(cfg, retrain_id)
    client.log_artifact(run_id, str(path), artifact_path=f"reports/dt={ds}")
    log.info("mlflow: logged the report of %s to run %s (retrain %s)", ds, run_id, retrain_id)
    return run_id

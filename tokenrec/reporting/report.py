"""Static HTML report of one nightly run: the page a person opens in a browser after ``tokenrec_nightly``.

``tokenrec report --ds D`` and the ``publish`` task (right after its swap) render one self-contained page
about the published ``recommendations/dt=D`` and publish it atomically
(:func:`tokenrec.storage.publish_partition`) at ``<lake>/_reports/dt=D/report.html``; it is also logged to
MLflow as ``reports/dt=D/report.html`` in the parent run of the retrain that produced the model. The page
(laid out by :mod:`tokenrec.reporting.page`) shows:

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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import TokenrecError
from tokenrec.storage import current_version, is_published, publish_partition, read_json, read_manifest

log = logging.getLogger(__name__)

REPORTS_TABLE = "_reports"
REPORT_FILE = "report.html"
POPULAR_FRACTION = 0.1  # "popular": the 10 % of the catalog with the most training interactions
DECILES = 10
EXAMPLE_USERS, TOP_SHOWN, HISTORY_SHOWN = 3, 10, 10
CHAMPION_ENTRY = "champion"  # the model name evaluate gives the champion scored on the retrain's split
SPLIT_NAMES = {InteractionData.TRAIN: "train", InteractionData.VALID: "valid", InteractionData.TEST: "test"}


class ReportError(TokenrecError):
    """The report of a date cannot be written (no published output for it)."""


@dataclass(frozen=True)
class OutputStats:
    """Coverage and popularity of one day's recommendations (definitions of ``sql/analytics/``)."""

    users: int  # users with a list
    rows: int  # (user, item) rows
    catalog_size: int  # items of id_maps/items first seen on or before the day
    items_recommended: int  # distinct items in any list
    catalog_coverage: float  # items_recommended / catalog_size
    catalog_coverage_top10: float  # the same over ranks 1..10 only
    top_item_exposure_share: float  # share of users whose list holds the most exposed item
    popular_fraction: float  # the popular set: the top ceil(popular_fraction x catalog_size) items ...
    popular_items: int  # ... by training interactions, that is this many
    popular_share: float  # share of rows whose item is popular
    popular_train_share: float  # share of the snapshot's training interactions on the popular items
    decile_rec_share: list[float]  # (10,) share of rows per popularity decile, 1 = most popular
    decile_train_share: list[float]  # (10,) share of training interactions per popularity decile


@dataclass
class ModelFacts:
    """What the registry and the retrain's run folder say about the model that wrote the lists."""

    name: str
    version: int
    tags: dict[str, str] = field(default_factory=dict)  # the version's tags (metrics, gate decision, retrain)
    champion: str = "none"  # the champion version it is compared with, "none" when there was none
    champion_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> {"valid.HR@20": x}
    champion_basis: str = ""  # where the champion's numbers come from, said on the page
    evaluation: dict[str, Any] | None = None  # the retrain's eval/metrics.json
    notes: list[str] = field(default_factory=list)  # what could not be read, said on the page

    @property
    def retrain_id(self) -> str | None:
        return self.tags.get("retrain_id")

    def metrics(self, model: str) -> dict[str, float]:
        """``{"valid.NDCG@20": x, ...}`` of ``model`` as tagged on this version."""
        return tagged_metrics(self.tags, model)


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
    from tokenrec.reporting import page as report_page
    from tokenrec.reporting.show import titles

    lake = schema.Lake.at(cfg.paths.lake)
    partition = lake.recommendations(ds)
    manifest = read_manifest(partition)
    recs = pq.read_table(partition, schema=schema.RECOMMENDATIONS)
    items_map, users_map = read_id_map(lake.id_map(schema.ITEMS)), read_id_map(lake.id_map(schema.USERS))
    data = InteractionData.load(lake.interactions(ds)) if is_published(lake.interactions(ds)) else None
    facts = model_facts(cfg, manifest["model_name"], int(manifest["model_version"]))
    run_dir = Path(cfg.paths.runs) / facts.retrain_id if facts.retrain_id else None
    page = report_page.render(
        cfg,
        ds,
        manifest,
        facts,
        run_dir,
        output_stats(recs, items_map, data, ds),
        example_users(recs, users_map, items_map, data, titles(cfg)),
    )
    return page.encode("utf-8"), facts


def model_facts(cfg: Config, name: str, version: int) -> ModelFacts:
    """Registry tags of ``version``, the champion numbers it was compared with, and its retrain's evaluation.

    The champion's numbers are those the promotion gate used: the champion scored by ``evaluate`` on this
    retrain's own split (version tags ``metric.champion.*``, ``eval_champion_version``). A version registered
    without them is shown against the evaluation tagged on the champion version itself (its own split).
    """
    from tokenrec.mlops import packaging, registry

    facts = ModelFacts(name, version)
    try:
        facts.tags = packaging.resolve_version(cfg, name, version).tags
    except registry.RegistryError as exc:
        facts.notes.append(f"registry: {exc}")
        return facts
    same_split = tagged_metrics(facts.tags, CHAMPION_ENTRY)
    if same_split:
        facts.champion = facts.tags.get("eval_champion_version", "none")
        facts.champion_metrics = {cfg.mlflow.gated_model: same_split}
        facts.champion_basis = "scored on this retrain's evaluation split"
    else:
        facts.champion = facts.tags.get("compared_with", "none")
        if facts.champion.isdigit():
            try:
                champion_tags = packaging.resolve_version(cfg, name, int(facts.champion)).tags
                facts.champion_metrics = {
                    cfg.mlflow.gated_model: tagged_metrics(champion_tags, cfg.mlflow.gated_model)
                }
                facts.champion_basis = "its own evaluation (another split)"
            except registry.RegistryError as exc:
                facts.notes.append(f"champion version {facts.champion}: {exc}")
    if "eval_champion_error" in facts.tags:
        facts.notes.append(f"the champion could not be scored: {facts.tags['eval_champion_error']}")
    if facts.retrain_id:
        path = Path(cfg.paths.runs) / facts.retrain_id / "eval" / "metrics.json"
        if path.is_file():
            facts.evaluation = read_json(path)
        else:
            facts.notes.append(f"no evaluation file {path}")
    return facts


def tagged_metrics(tags: dict[str, str], model: str) -> dict[str, float]:
    """``{"valid.NDCG@20": 0.05, ...}`` of ``model`` from version tags ``metric.<model>.<split>.<name>``."""
    from tokenrec.mlops.registry import metric_tag

    prefix = metric_tag(f"{model}.")
    return {k[len(prefix) :].replace("_at_", "@"): float(v) for k, v in tags.items() if k.startswith(prefix)}


def output_stats(recs: pa.Table, items_map: pa.Table, data: InteractionData | None, ds: str) -> OutputStats:
    """Coverage and popularity of ``recs`` (one day), the catalog of ``items_map`` and the snapshot ``data``.

    Popularity is the number of training interactions per item in ``data`` (none without a snapshot); items
    rank by it, ties by the smaller index, and decile d holds ranks ``[(d-1) N/10, d N/10)`` of the N catalog
    items, so decile 1 is the popular set of ``fct_popular_share`` with ``top_n = ceil(N/10)``.
    """
    day = pa.scalar(schema.parse_ds(ds), pa.date32())
    in_catalog = pc.less_equal(items_map.column(schema.FIRST_SEEN), day).to_numpy(zero_copy_only=False)
    n_catalog, n_map = int(in_catalog.sum()), items_map.num_rows
    idx = pc.index_in(recs.column(schema.ITEM_ID), value_set=items_map.column(schema.RAW_ID))
    idx = idx.fill_null(-1).to_numpy(zero_copy_only=False)  # (rows,) position in the map = item index
    rows, users = recs.num_rows, pc.count_distinct(recs.column(schema.USER_ID)).as_py()
    top10 = pc.less_equal(recs.column(schema.RANK), TOP_SHOWN).to_numpy(zero_copy_only=False)
    exposure = pc.value_counts(recs.column(schema.ITEM_ID)).field("counts").to_numpy() if rows else [0]

    counts = np.zeros(n_map, dtype=np.int64)  # (n_map,) training interactions per item
    if data is not None:
        train_items = data.train_pairs[1]
        counts += np.bincount(train_items[train_items < n_map], minlength=n_map)[:n_map]
    catalog = np.flatnonzero(in_catalog)
    ranked = catalog[np.lexsort((catalog, -counts[catalog]))]  # most training interactions first
    decile = np.full(n_map, -1)
    decile[ranked] = np.arange(len(ranked)) * DECILES // max(1, n_catalog)
    top_n = math.ceil(POPULAR_FRACTION * n_catalog)
    popular = np.zeros(n_map, dtype=bool)
    popular[ranked[:top_n]] = True
    popular &= counts > 0  # as in the SQL: only items with a training interaction are ranked at all
    known = idx[idx >= 0]
    rec_deciles = decile[known]
    total_train = max(1, int(counts.sum()))
    return OutputStats(
        users=users,
        rows=rows,
        catalog_size=n_catalog,
        items_recommended=pc.count_distinct(recs.column(schema.ITEM_ID)).as_py(),
        catalog_coverage=_ratio(pc.count_distinct(recs.column(schema.ITEM_ID)).as_py(), n_catalog),
        catalog_coverage_top10=_ratio(len(np.unique(idx[top10])), n_catalog),
        top_item_exposure_share=_ratio(int(max(exposure)), users),
        popular_fraction=POPULAR_FRACTION,
        popular_items=top_n,
        popular_share=_ratio(int(popular[known].sum()), rows),
        popular_train_share=float(counts[popular].sum()) / total_train,
        decile_rec_share=(
            np.bincount(rec_deciles[rec_deciles >= 0], minlength=DECILES) / max(1, rows)
        ).tolist(),
        decile_train_share=(
            np.bincount(decile[catalog], weights=counts[catalog], minlength=DECILES) / total_train
        ).tolist(),
    )


def example_users(
    recs: pa.Table,
    users_map: pa.Table,
    items_map: pa.Table,
    data: InteractionData | None,
    names: dict[str, str],
    n: int = EXAMPLE_USERS,
) -> list[dict[str, Any]]:
    """The first ``n`` users by (id length, id), as ``tokenrec show`` picks them, with history and top 10.

    Returns:
        Per user: ``user_id``, ``interactions`` (count in the snapshot), ``history`` (the latest
        ``HISTORY_SHOWN`` as ``(date, item_id, title, split)``, oldest first) and ``top`` (``(rank, item_id,
        title, score)`` for ranks 1..10); titles are "" where the data set has none.
    """
    chosen = sorted(set(recs.column(schema.USER_ID).to_pylist()), key=lambda u: (len(u), u))[:n]
    item_ids = items_map.column(schema.RAW_ID).to_numpy(zero_copy_only=False)
    user_idx = pc.index_in(pa.array(chosen, pa.string()), value_set=users_map.column(schema.RAW_ID))
    out = []
    for user, idx in zip(chosen, user_idx.fill_null(-1).to_pylist(), strict=True):
        rows = (
            recs.filter(pc.equal(recs.column(schema.USER_ID), user)).sort_by(schema.RANK).slice(0, TOP_SHOWN)
        )
        ranks, items = rows.column(schema.RANK).to_pylist(), rows.column(schema.ITEM_ID).to_pylist()
        scores = rows.column(schema.SCORE).to_pylist()
        top = [(r, i, names.get(i, ""), s) for r, i, s in zip(ranks, items, scores, strict=True)]
        mine = np.flatnonzero(data.users == idx) if data is not None and idx >= 0 else np.zeros(0, np.int64)
        history = []
        for row in mine[-HISTORY_SHOWN:]:  # rows are sorted by (user, time, item): the latest last
            day = np.datetime64(int(data.timestamps[row]), "us").astype("datetime64[D]")
            item = str(item_ids[data.items[row]])
            history.append((str(day), item, names.get(item, ""), SPLIT_NAMES[int(data.splits[row])]))
        out.append({"user_id": user, "interactions": len(mine), "history": history, "top": top})
    return out


def _write_page(folder: Path, page: bytes) -> None:
    folder.mkdir()
    (folder / REPORT_FILE).write_bytes(page)


def _ratio(a: float, b: float) -> float:
    return float(a) / b if b else math.nan


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

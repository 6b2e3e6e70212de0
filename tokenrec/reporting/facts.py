"""The numbers of the nightly report: the model's registry facts, coverage and popularity, example users.

:mod:`tokenrec.reporting.report` gathers them for a date with these functions, :mod:`tokenrec.reporting.page`
lays them out. Coverage and popularity follow the definitions of ``sql/analytics/`` (``fct_catalog_coverage_daily``,
``fct_popular_share``); everything is a function of the date's inputs, nothing reads the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.interactions import InteractionData
from tokenrec.mlops.registry import CHAMPION_ENTRY, metric_tag
from tokenrec.run_folder import RunFolder
from tokenrec.storage import read_json

POPULAR_FRACTION = 0.1  # "popular": the 10 % of the catalog with the most training interactions
DECILES = 10
EXAMPLE_USERS, TOP_SHOWN, HISTORY_SHOWN = 3, 10, 10
SPLIT_NAMES = {InteractionData.TRAIN: "train", InteractionData.VALID: "valid", InteractionData.TEST: "test"}


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
        path = RunFolder.at(cfg.paths.runs, facts.retrain_id).eval_metrics
        if path.is_file():
            facts.evaluation = read_json(path)
        else:
            facts.notes.append(f"no evaluation file {path}")
    return facts


def tagged_metrics(tags: dict[str, str], model: str) -> dict[str, float]:
    """``{"valid.NDCG@20": 0.05, ...}`` of ``model`` from version tags ``metric.<model>.<split>.<name>``."""
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


def _ratio(a: float, b: float) -> float:
    return float(a) / b if b else math.nan

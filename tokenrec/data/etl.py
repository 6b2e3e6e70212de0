"""The ETL task: raw event log -> ``interactions/snapshot_date=<ds>/`` (+ ``quarantine/``, ``id_maps/``).

Steps (SQL in ``sql/etl/``, dbt style):
  1. load the raw source (:mod:`tokenrec.data.loaders`): every record valid or quarantined with a reason;
  2. ``stg_events``: events up to the end of the logical date, above the optional rating threshold;
  3. ``int_events_deduped``: one event per (user, item), the first occurrence kept;
  4. ``int_kcore_step``, repeated until stable: iterative k-core;
  5. ``int_new_ids``: append new raw ids to the stable ID maps;
  6. ``fct_interactions`` (leave-one-out) or ``fct_interactions_global_time``: indices and the split.
The snapshot is *staged* (:func:`tokenrec.storage.stage_partition`): readers keep seeing the published
snapshot of that date, if any, until the Great Expectations gate (:func:`tokenrec.gates.expectations.validate_interactions`)
passes on the staged rows and publishes them atomically. A snapshot that fails the gate is never published, so
a bad rerun of a date loses nothing. The quarantine is published at once (it is what a person reads to see why
a run failed). Running a date twice gives the same rows and touches no other date. Nothing is staged when the
input is unusable.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tokenrec import schema
from tokenrec.config import Config, config_yaml
from tokenrec.data.id_maps import append_ids, id_map_lock, read_id_map
from tokenrec.data.loaders import load_source
from tokenrec.errors import ConfigError, InputError
from tokenrec.reporting.sql import run_sql
from tokenrec.storage import publish_partition, read_manifest, stage_partition, swap_partition

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass
class EtlResult:
    snapshot: Path  # the folder holding the new rows: the staged version, or the partition when published
    quarantine: Path
    manifest: dict[str, Any]
    published: bool  # False: staged, waiting for validate_interactions


def run_etl(spark: SparkSession, cfg: Config, ds: str, publish: bool = False) -> EtlResult:
    """Build the interactions snapshot of logical date ``ds`` from ``cfg.source`` and stage it.

    ``publish=True`` publishes it at once, without the validation gate: for benchmarks and tests of the ETL
    itself, never for the pipeline.
    """
    from pyspark.sql import functions as F

    started = time.monotonic()
    day = schema.parse_ds(ds)
    lake = schema.Lake.at(cfg.paths.lake)
    if not cfg.source.path:
        raise ConfigError("source.path is empty: pass --dataset NAME or set source.path to the raw file or folder")
    _check_threshold(cfg)

    parsed = load_source(spark, cfg.source, cfg.source.path, day)
    counts = _record_counts(parsed.records)
    _refuse_mostly_bad(counts, parsed.files, cfg.etl.max_quarantine_share)

    parsed.events.createOrReplaceTempView("parsed_events")
    snapshot_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    threshold = cfg.etl.rating_threshold
    stg = _cached(run_sql(
        spark, "etl/stg_events", view="stg_events", snapshot_end=snapshot_end,
        apply_threshold=threshold is not None, min_rating=float(threshold or 0.0),
    ), "stg_events")
    deduped = _cached(run_sql(spark, "etl/int_events_deduped", view="int_events_deduped"), "int_events_deduped")
    kcore, rounds, n_deduped, n_kcore = _kcore(spark, deduped, cfg.etl.kcore, cfg.etl.kcore_max_iterations)
    if n_kcore == 0:
        raise InputError(
            cfg.source.path, f"no interactions are left after the {cfg.etl.kcore}-core filter",
            "lower etl.kcore or check that the source holds enough events", field="etl.kcore",
        )
    kcore.createOrReplaceTempView("int_events_kcore")

    maps_root = lake.id_map(schema.USERS).parent
    with id_map_lock(maps_root, cfg.etl.id_map_lock_timeout_s, holder=f"the ETL of {ds}"):  # one writer at a time
        new_users, n_users = _extend_id_map(spark, kcore, schema.USER_ID, lake.id_map(schema.USERS), ds, "id_map_users")
        new_items, n_items = _extend_id_map(spark, kcore, schema.ITEM_ID, lake.id_map(schema.ITEMS), ds, "id_map_items")

    if cfg.etl.split == "leave_one_out":
        interactions = run_sql(spark, "etl/fct_interactions")
    else:
        valid_cut, test_cut = _time_cuts(kcore, cfg.etl.valid_quantile, cfg.etl.test_quantile)
        interactions = run_sql(spark, "etl/fct_interactions_global_time", valid_cut=valid_cut, test_cut=test_cut)
    interactions = interactions.repartitionByRange(
        cfg.spark.shuffle_partitions, schema.USER_IDX
    ).sortWithinPartitions(schema.USER_IDX, schema.EVENT_TS, schema.ITEM_IDX)

    stats = spark.table("int_events_kcore").agg(
        F.countDistinct(schema.USER_ID).alias("users"), F.countDistinct(schema.ITEM_ID).alias("items")
    ).first()
    split_counts = {r[schema.SPLIT]: r["n"] for r in interactions.groupBy(schema.SPLIT).agg(F.count("*").alias("n")).collect()}
    n_rows = sum(split_counts.values())
    n_stg = stg.count()
    previous = _previous_snapshot(lake, day)
    manifest = {
        "table": schema.INTERACTIONS_TABLE,
        "snapshot_date": ds,
        "dataset": cfg.source.dataset,
        "source": {"path": cfg.source.path, "format": cfg.source.format, "files": len(parsed.files)},
        "raw_rows": counts["raw"],
        "valid_rows": counts["valid"],
        "quarantined_rows": counts["quarantined"],
        "quarantine_reasons": counts["reasons"],
        "events_in_snapshot": n_stg,
        "duplicates_dropped": n_stg - n_deduped,
        "kcore": cfg.etl.kcore,
        "kcore_rounds": rounds,
        "kcore_removed": n_deduped - n_kcore,
        "rows": n_rows,
        "split_counts": split_counts,
        "users": stats["users"],
        "items": stats["items"],
        "n_users": n_users,
        "n_items": n_items,
        "new_users": new_users,
        "new_items": new_items,
        "split": cfg.etl.split,
        "previous_snapshot": previous,
        "config_hash": cfg.hash(),
    }

    quarantine = parsed.records.where(F.col(schema.REASON).isNotNull()).orderBy(schema.SOURCE_FILE, schema.LINE_NO)
    snapshot_path = lake.interactions(ds)
    quarantine_path = lake.quarantine(ds)
    manifest["duration_s"] = round(time.monotonic() - started, 2)
    config_file = {"_config.yaml": config_yaml(cfg).encode()}  # the resolved config next to the output
    staged = stage_partition(snapshot_path, lambda folder: _write(interactions, folder), manifest, config_file)
    publish_partition(
        quarantine_path, lambda folder: _write(quarantine, folder, files=1),
        {"table": schema.QUARANTINE_TABLE, "snapshot_date": ds, "rows": counts["quarantined"]}, config_file,
    )
    for df in (stg, deduped, kcore):
        df.unpersist()
    parsed.records.unpersist()
    if publish:
        swap_partition(snapshot_path, staged)
    log.info(
        "snapshot %s %s: %d rows, %d users, %d items (%d raw, %d quarantined) in %.1fs",
        snapshot_path, "published" if publish else "staged (validate-interactions publishes it)", n_rows,
        manifest["users"], manifest["items"], counts["raw"], counts["quarantined"], time.monotonic() - started,
    )
    return EtlResult(snapshot_path if publish else staged, quarantine_path, manifest, published=publish)


def _check_threshold(cfg: Config) -> None:
    no_rating = cfg.source.format in ("user_sequence",) or (
        cfg.source.format in ("csv", "jsonl", "parquet") and not cfg.source.rating_col
    )
    if cfg.etl.rating_threshold is not None and no_rating:
        raise ConfigError(
            f"etl.rating_threshold is set but source {cfg.source.format!r} has no rating column; "
            "set source.rating_col or remove the threshold"
        )


def _record_counts(records: DataFrame) -> dict[str, Any]:
    from pyspark.sql import functions as F

    rows = records.groupBy(schema.REASON).agg(F.count("*").alias("n")).collect()
    reasons = Counter()
    valid = 0
    for row in rows:
        if row[schema.REASON] is None:
            valid += row["n"]
        else:
            # Group messages by their stable prefix ("timestamp: 'x' is not a number" -> "timestamp: ...").
            reasons[_reason_kind(row[schema.REASON])] += row["n"]
    quarantined = sum(reasons.values())
    return {"raw": valid + quarantined, "valid": valid, "quarantined": quarantined, "reasons": dict(reasons)}


def _reason_kind(reason: str) -> str:
    head, sep, _ = reason.partition(": ")
    if sep and " " not in head:
        rest = reason[len(head) + 2:]
        return f"{head}: " + ("missing" if rest == "missing" else rest.split("'")[-1].strip() or rest)
    return reason.split(", got")[0]


def _refuse_mostly_bad(counts: dict[str, Any], files: list[str], max_share: float) -> None:
    """Unusable input (wrong delimiter, wrong time unit, ...) fails before anything is published."""
    if counts["raw"] == 0:
        raise InputError(files[0], "no records were found", "check source.path and source.format")
    share = counts["quarantined"] / counts["raw"]
    if share > max_share:
        reason, n = max(counts["reasons"].items(), key=lambda kv: kv[1])
        field = reason.split(":")[0] if ": " in reason else None
        raise InputError(
            files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)",
            f"{counts['quarantined']} of {counts['raw']} records are malformed ({share:.0%} > "
            f"etl.max_quarantine_share {max_share:.0%}); most common: {reason!r} ({n} records)",
            "check source.format, source.delimiter and source.time_unit against the file; nothing was published",
            field=field,
        )
    if counts["quarantined"]:
        log.warning("quarantined %d of %d records: %s", counts["quarantined"], counts["raw"], counts["reasons"])


def _cached(df: DataFrame, name: str) -> DataFrame:
    df = df.cache()
    df.createOrReplaceTempView(name)
    return df


def _kcore(spark: SparkSession, events: DataFrame, k: int, max_rounds: int) -> tuple[DataFrame, int, int, int]:
    """Repeat ``int_kcore_step`` until no row is removed; returns the result, the number of rounds and the row
    counts before and after (counted on the way, so the caller need not scan again)."""
    current = events
    n = n_in = current.count()
    if k <= 1:
        return current, 0, n_in, n_in
    for rounds in range(1, max_rounds + 1):
        current.createOrReplaceTempView("kcore_input")
        nxt = run_sql(spark, "etl/int_kcore_step", k=k).localCheckpoint(eager=True)
        n_next = nxt.count()
        current = nxt
        if n_next == n:
            return current, rounds, n_in, n
        n = n_next
    raise InputError(
        "etl", f"the {k}-core filter did not converge in {max_rounds} rounds",
        "raise etl.kcore_max_iterations", field="etl.kcore_max_iterations",
    )


def _extend_id_map(
    spark: SparkSession, events: DataFrame, column: str, folder: Path, ds: str, view: str
) -> tuple[int, int]:
    """Append raw ids of ``column`` not yet in the map at ``folder``; register the full map as ``view``.

    Returns (ids added, ids in the map now)."""
    from pyspark.sql import functions as F

    current = read_id_map(folder)
    _map_view(spark, current, "id_map_current")
    first_seen = events.groupBy(F.col(column).alias(schema.RAW_ID)).agg(F.min(schema.EVENT_TS).alias("first_ts"))
    first_seen.createOrReplaceTempView("entity_first_seen")
    new_ids = run_sql(spark, "etl/int_new_ids", next_idx=current.num_rows, ds=ds).toArrow()
    append_ids(folder, new_ids, ds)
    extended = read_id_map(folder)
    _map_view(spark, extended, view)
    return new_ids.num_rows, extended.num_rows


def _map_view(spark: SparkSession, table: pa.Table, view: str) -> None:
    """Register an ID map (raw_id, idx) held by the driver as a Spark temp view."""
    df = spark.createDataFrame(table.select([schema.RAW_ID, schema.IDX]).to_pandas(), schema=f"{schema.RAW_ID} STRING, {schema.IDX} INT")
    df.createOrReplaceTempView(view)


def _time_cuts(events: DataFrame, valid_q: float, test_q: float) -> tuple[dt.datetime, dt.datetime]:
    from pyspark.sql import functions as F

    secs = events.select(F.unix_micros(schema.EVENT_TS).alias("us"))
    valid_us, test_us = secs.approxQuantile("us", [valid_q, test_q], 0.0)
    to_ts = lambda us: dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC)  # noqa: E731
    return to_ts(valid_us), to_ts(test_us)


def _previous_snapshot(lake: schema.Lake, day: dt.date) -> dict[str, Any] | None:
    """The latest published snapshot before ``day`` (for the row-count ratio check)."""
    table = lake.table(schema.INTERACTIONS_TABLE)
    if not table.is_dir():
        return None
    prefix = f"{schema.SNAPSHOT_KEY}="
    dates = sorted(
        p.name.removeprefix(prefix) for p in table.iterdir()
        if p.name.startswith(prefix) and p.name.removeprefix(prefix) < day.isoformat() and p.is_symlink()
    )
    if not dates:
        return None
    manifest = read_manifest(lake.interactions(dates[-1]))
    return {"snapshot_date": dates[-1], "rows": manifest["rows"]}


def _write(df: DataFrame, folder: Path, files: int | None = None) -> None:
    out = df.coalesce(files) if files else df
    out.write.mode("errorifexists").parquet(str(folder))

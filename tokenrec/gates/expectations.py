"""Great Expectations gates. A failed suite raises :class:`DataValidationError`; GX itself stops nothing.

``validate_interactions`` checks a published interactions snapshot on Spark:
  - ids not null and inside the ID maps (0 <= idx < map size), split in (train, valid, test);
  - no duplicate (user_idx, item_idx);
  - event times between ``validation.min_event_ts`` and the end of the logical date;
  - leave-one-out invariants: exactly one test and one valid row per user with >= 3 interactions, none for
    users with fewer (checked on a per-user frame);
  - row count >= ``validation.min_rows`` and within ``validation.max_row_change`` of the previous snapshot.
The full GX result is written as JSON, with GX data docs (HTML), to ``<lake>/_validation/interactions/<ds>/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.errors import DataValidationError, InputError
from tokenrec.storage import atomic_write_json, is_published, read_manifest, staged_version, swap_partition

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _expectations(cfg: Config, ds: str, manifest: dict[str, Any], previous_rows: int | None) -> tuple[list, list]:
    """(row-level expectations on the snapshot, expectations on the per-user split frame)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    E = gx.expectations
    day = schema.parse_ds(ds)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    start = dt.datetime.fromisoformat(cfg.validation.min_event_ts).replace(tzinfo=dt.UTC)
    rows = [
        *[E.ExpectColumnValuesToNotBeNull(column=c) for c in (schema.USER_IDX, schema.ITEM_IDX, schema.EVENT_TS, schema.SPLIT)],
        E.ExpectColumnValuesToBeBetween(column=schema.USER_IDX, min_value=0, max_value=manifest["n_users"] - 1),
        E.ExpectColumnValuesToBeBetween(column=schema.ITEM_IDX, min_value=0, max_value=manifest["n_items"] - 1),
        E.ExpectColumnValuesToBeInSet(column=schema.SPLIT, value_set=list(schema.SPLITS)),
        E.ExpectCompoundColumnsToBeUnique(column_list=[schema.USER_IDX, schema.ITEM_IDX]),
        E.ExpectColumnValuesToBeBetween(column=schema.EVENT_TS, min_value=start, max_value=end, strict_max=True),
        E.ExpectTableRowCountToBeBetween(min_value=cfg.validation.min_rows),
    ]
    if previous_rows:
        r = cfg.validation.max_row_change
        rows.append(E.ExpectTableRowCountToBeBetween(
            min_value=int(previous_rows * (1 - r)), max_value=int(previous_rows * (1 + r)) + 1,
            meta={"why": f"within {r:.0%} of the previous snapshot's {previous_rows} rows"},
        ))
    users = []
    if cfg.etl.split == "leave_one_out":
        users.append(E.ExpectColumnValuesToBeInSet(
            column="split_ok", value_set=[True],
            meta={"why": "exactly one test and one valid row per user with >= 3 interactions, none otherwise"},
        ))
    return rows, users


def _per_user(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    counts = df.groupBy(schema.USER_IDX).agg(
        F.count("*").alias("n"),
        F.sum((F.col(schema.SPLIT) == schema.SPLIT_TEST).cast("int")).alias("n_test"),
        F.sum((F.col(schema.SPLIT) == schema.SPLIT_VALID).cast("int")).alias("n_valid"),
    )
    ok = F.when(F.col("n") >= 3, (F.col("n_test") == 1) & (F.col("n_valid") == 1)).otherwise(
        (F.col("n_test") == 0) & (F.col("n_valid") == 0)
    )
    return counts.withColumn("split_ok", ok)


def validate_interactions(spark: SparkSession, cfg: Config, ds: str) -> dict[str, Any]:
    """The gate on the interactions snapshot of ``ds``: run the suite, publish the staged snapshot if it passes.

    The ETL stages its snapshot; this checks the staged rows and, when every expectation passes, publishes them
    atomically. A failing snapshot stays staged and unpublished (whatever was published for ``ds`` before is
    untouched) and the error names the table, the expectations and sample rows. With nothing staged, the
    published snapshot is checked again (a rerun of this task is idempotent).
    """
    lake = schema.Lake.at(cfg.paths.lake)
    snapshot = lake.interactions(ds)
    staged = staged_version(snapshot)
    if staged is None and not is_published(snapshot):
        raise InputError(snapshot, "no staged or published interactions snapshot", f"run `tokenrec etl --ds {ds}` first")
    checked = staged or snapshot
    manifest = read_manifest(checked)
    previous = manifest.get("previous_snapshot") or {}
    df = spark.read.schema(schema.INTERACTIONS_DDL).parquet(str(checked)).cache()
    per_user = _per_user(df).cache()
    report = lake.validation_report(schema.INTERACTIONS_TABLE, ds)
    frames = {"interactions": df, "interactions_per_user": per_user}
    try:
        rows, users = _expectations(cfg, ds, manifest, previous.get("rows"))
        suites = {"interactions": rows, "interactions_per_user": users}
        outcome = run_gx_suites(frames, suites, ds, report, "spark", cfg.validation.sample_rows)
    finally:
        df.unpersist()
        per_user.unpersist()
    failures = [r for r in outcome["results"] if not r["success"]]
    if failures:
        n = cfg.validation.sample_rows
        details = "; ".join(describe_failure(r, _sample_rows(r, frames[r["suite"]], n)) for r in failures)
        kept = "the staged snapshot was not published" if staged else "the published snapshot fails today's suite"
        raise DataValidationError(
            f"table interactions ({checked}) failed {len(failures)} of {len(outcome['results'])} expectations: "
            f"{details}. Full result: {report / 'result.json'}. Fix the source or the ETL config and rerun etl; "
            f"{kept} and nothing downstream will run on it.",
            report_path=str(report / "result.json"),
        )
    if staged is not None:
        swap_partition(snapshot, staged)
    log.info("interactions %s passed %d expectations; %s", ds, len(outcome["results"]),
             "published" if staged else "already published")
    return {
        "snapshot": str(snapshot), "expectations": len(outcome["results"]), "report": str(report),
        "published_now": staged is not None,
    }


def run_gx_suites(
    frames: dict[str, Any], suites: dict[str, list], ds: str, report: Path, engine: str, sample_rows: int,
) -> dict[str, Any]:
    """Run each suite on its frame with Great Expectations; write ``result.json`` and data docs to ``report``.

    Args:
        frames: suite name -> Spark or pandas data frame.
        suites: suite name -> GX expectations (suites without expectations are skipped).
        ds: the logical date (names the batch and checkpoint).
        report: folder for ``result.json`` and ``data_docs/``.
        engine: ``spark`` or ``pandas``.
        sample_rows: offending values GX quotes per expectation.

    Returns:
        ``{"success": bool, "ds": ds, "results": [flattened expectation results]}``; it raises nothing.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tokenrec-gx-") as root:
        context = gx.get_context(mode="file", project_root_dir=root)
        context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
        if engine == "spark":
            source = context.data_sources.add_spark(name="lake", persist=False)  # frames are cached by us
        else:
            source = context.data_sources.add_pandas(name="lake")
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": sample_rows}
        for name, expectations in suites.items():
            if not expectations:
                continue
            batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(ds)
            suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
            definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"{name}-{ds}", validation_definitions=[definition], result_format=result_format,
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            ))
            run = checkpoint.run(batch_parameters={"dataframe": frames[name]})
            for validation in run.run_results.values():
                results.extend(_flatten(validation, name))
        outcome = {"success": all(r["success"] for r in results), "ds": ds, "results": results}
        docs = Path(root) / "gx" / "uncommitted" / "data_docs" / "local_site"
        report.mkdir(parents=True, exist_ok=True)
        if docs.is_dir():
            shutil.rmtree(report / "data_docs", ignore_errors=True)
            shutil.copytree(docs, report / "data_docs")
        atomic_write_json(report / "result.json", outcome)
    return outcome


def _flatten(validation: Any, suite: str) -> list[dict[str, Any]]:
    out = []
    for r in validation.results:
        config = r.expectation_config
        out.append({
            "suite": suite,
            "expectation": config.type,
            "kwargs": json.loads(json.dumps(config.kwargs, default=str)),
            "meta": config.meta or {},
            "success": bool(r.success),
            "result": json.loads(json.dumps(r.result, default=str)),
        })
    return out


def describe_failure(result: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """One readable clause per failed expectation: suite, expectation and arguments, counts, why, samples."""
    kwargs = {k: v for k, v in result["kwargs"].items() if k not in ("batch_id", "result_format")}
    res = result["result"]
    what = f"{result['suite']}: {result['expectation']}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    if "unexpected_count" in res:
        counts = f"{res['unexpected_count']} of {res.get('element_count')} rows unexpected"
    else:
        counts = f"observed {res.get('observed_value')}"
    why = result["meta"].get("why")
    return f"{what}: {counts}" + (f" ({why})" if why else "") + (f", e.g. {samples}" if samples else "")


def _sample_rows(result: dict[str, Any], df: DataFrame, n: int) -> list[dict[str, Any]]:
    """Offending rows for the row-level expectations this module uses (values alone say too little)."""
    from pyspark.sql import functions as F

    kw = result["kwargs"]
    kind = result["expectation"]
    col = kw.get("column")
    if kind == "expect_column_values_to_not_be_null":
        bad = df.where(F.col(col).isNull())
    elif kind == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        bad = df.where(~F.col(col).between(F.lit(lo).cast(dict(df.dtypes)[col]), F.lit(hi).cast(dict(df.dtypes)[col])))
    elif kind == "expect_column_values_to_be_in_set":
        bad = df.where(~F.col(col).isin(kw["value_set"]) | F.col(col).isNull())
    elif kind == "expect_compound_columns_to_be_unique":
        keys = kw["column_list"]
        bad = df.join(df.groupBy(*keys).count().where("count > 1").select(*keys), keys)
    else:
        return []
    return [row.asDict() for row in bad.limit(n).collect()]

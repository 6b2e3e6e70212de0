"""Pipeline task ``validate_recommendations``: the Great Expectations gate on the staged output of a date.

Runs on the version that ``batch_inference`` staged (readers do not see it yet), with GX on pandas:

- exact Arrow schema of every data file (names, types, nullability: the ``RECOMMENDATIONS`` contract);
- no nulls; ``rank`` in 1..K; ``(user_id, rank)`` and ``(user_id, item_id)`` unique; every user and item id in
  the ID maps; never an item of the user's snapshot history; model name/version as in the manifest;
  ``generated_at`` the logical date at 00:00 UTC; row count as in the manifest;
- per user: ``min(K, index items - seen items)`` rows, ranks contiguous 1..n, scores non-increasing by rank;
- user coverage: users with rows >= ``inference.min_user_coverage`` x users with an interaction.

A failure raises :class:`~tokenrec.errors.DataValidationError` naming the table, each failed expectation, its
counts and sample offending rows; nothing is published. A pass writes ``_validation.json`` into the staged
version with the SHA-256 of its data files, which ``publish`` re-checks. The full GX result (JSON and data
docs) goes to ``<lake>/_validation/recommendations/<ds>/``.

Scale: the gate reads the whole output into pandas (about 100 bytes a row); for tens of millions of rows run
the same suites on Spark, as :mod:`tokenrec.validation` does for interactions.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import DataValidationError, InputError
from tokenrec.storage import atomic_write_json, read_json, staged_version
from tokenrec.validation import describe_failure, run_gx_suites

log = logging.getLogger(__name__)

VALIDATION_FILE = "_validation.json"
ROWS, PER_USER = "recommendations", "recommendations_per_user"


def run(cfg: Config, ds: str, run_dir: Path | None) -> dict[str, Any]:
    """Validate the staged recommendations of ``ds``; raise on any failed expectation.

    Args:
        cfg: the resolved configuration (``inference.min_user_coverage``, ``inference.sample_rows``).
        ds: the logical date.
        run_dir: unused; kept for the common task signature.

    Returns:
        The staged version, the number of expectations and the report folder.

    Raises:
        InputError: nothing is staged for ``ds``.
        DataValidationError: an expectation failed (the message names them, with counts and sample rows).
    """
    del run_dir
    lake = schema.Lake.at(cfg.paths.lake)
    partition = lake.recommendations(ds)
    version = staged_version(partition)
    if version is None:
        raise InputError(
            partition, "no staged output to validate", f"Run `tokenrec batch-inference --ds {ds}` first."
        )
    manifest = read_json(version / schema.MANIFEST_FILE)
    report = lake.validation_report(schema.RECOMMENDATIONS_TABLE, ds)
    files = sorted(p for p in version.glob("*.parquet") if not p.name.startswith(("_", ".")))
    schema_errors = [
        f"{f.name}: {found}"
        for f in files
        if not (found := pq.read_schema(f).remove_metadata()).equals(
            schema.RECOMMENDATIONS, check_metadata=False
        )
    ]
    if schema_errors or not files:
        problem = "; ".join(schema_errors) if files else "no data files"
        raise DataValidationError(
            f"table recommendations ({version}) does not have the exact schema {schema.RECOMMENDATIONS}: "
            f"{problem}. Nothing was published; rerun batch_inference for {ds}.",
        )
    frames = _frames(ds, lake, manifest, files)
    outcome = run_gx_suites(frames, _expectations(cfg, ds, manifest, frames), ds, report, "pandas", 5)
    failures = [r for r in outcome["results"] if not r["success"]]
    if failures:
        n = cfg.inference.sample_rows
        details = "; ".join(describe_failure(r, _sample_rows(r, frames[r["suite"]], n)) for r in failures)
        raise DataValidationError(
            f"table recommendations (staged {version.name} of dt={ds}) failed {len(failures)} of "
            f"{len(outcome['results'])} expectations: {details}. Full result: {report / 'result.json'}. "
            "Nothing was published; readers keep the previous output. Fix the cause and rerun "
            "batch_inference.",
            report_path=str(report / "result.json"),
        )
    marker = {
        "success": True,
        "version": version.name,
        "expectations": len(outcome["results"]),
        "report": str(report),
        "files": {f.name: file_sha256(f) for f in files},
    }
    atomic_write_json(version / VALIDATION_FILE, marker)
    log.info("recommendations %s (%s) passed %d expectations", ds, version.name, len(outcome["results"]))
    return {"staged": str(version), "expectations": len(outcome["results"]), "report": str(report)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frames(ds: str, lake: schema.Lake, manifest: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    """The output rows with derived check columns, and one row per user with the per-user checks."""
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    data = InteractionData.load(lake.interactions(ds))
    users = _index(lake, schema.USERS)
    items = _index(lake, schema.ITEMS)
    user_idx = rows[schema.USER_ID].map(users)
    item_idx = rows[schema.ITEM_ID].map(items)
    rows["user_known"] = user_idx.notna()
    rows["item_known"] = item_idx.notna()
    seen_keys = np.unique(data.users * data.n_items + data.items)
    keys = user_idx.fillna(-1).to_numpy(np.int64) * data.n_items + item_idx.fillna(-1).to_numpy(np.int64)
    rows["seen"] = np.isin(keys, seen_keys) & rows["user_known"].to_numpy() & rows["item_known"].to_numpy()
    expected_at = pd.Timestamp(schema.parse_ds(ds).isoformat(), tz="UTC")
    rows["generated_at_ok"] = rows[schema.GENERATED_AT] == expected_at

    ordered = rows.sort_values([schema.USER_ID, schema.RANK], kind="stable")
    group = ordered.groupby(schema.USER_ID, sort=True)
    position = group.cumcount() + 1
    sizes = group.size()
    score_step = group[schema.SCORE].diff()
    per_user = pd.DataFrame(
        {
            "n_rows": sizes,
            "ranks_contiguous": (ordered[schema.RANK] == position).groupby(ordered[schema.USER_ID]).all(),
            "scores_non_increasing": (score_step.isna() | (score_step <= 0))
            .groupby(ordered[schema.USER_ID])
            .all(),
            "user_idx": sizes.index.to_series().map(users),
        }
    )
    distinct_seen = np.bincount(seen_keys // data.n_items, minlength=data.n_users)  # (n_users,)
    known = per_user["user_idx"].notna().to_numpy()
    seen_count = np.zeros(len(per_user), dtype=np.int64)
    seen_count[known] = distinct_seen[per_user["user_idx"].to_numpy()[known].astype(np.int64)]
    per_user["expected_rows"] = np.minimum(int(manifest["k"]), int(manifest["index_items"]) - seen_count)
    per_user["rows_ok"] = per_user["n_rows"] == per_user["expected_rows"]
    per_user = per_user.reset_index().rename(columns={"index": schema.USER_ID})
    return {ROWS: rows, PER_USER: per_user, "active_users": int((distinct_seen > 0).sum())}


def _index(lake: schema.Lake, kind: str) -> pd.Series:
    table = read_id_map(lake.id_map(kind))
    return pd.Series(table.column(schema.IDX).to_numpy(), index=table.column(schema.RAW_ID).to_pylist())


def _expectations(cfg: Config, ds: str, manifest: dict[str, Any], frames: dict[str, Any]) -> dict[str, list]:
    import great_expectations as gx

    E = gx.expectations
    flag = E.ExpectColumnValuesToBeInSet
    min_users = math.ceil(cfg.inference.min_user_coverage * frames["active_users"])
    rows = [
        E.ExpectTableColumnsToMatchOrderedList(
            column_list=[*schema.RECOMMENDATIONS.names, "user_known", "item_known", "seen", "generated_at_ok"]
        ),  # fmt: skip
        *[E.ExpectColumnValuesToNotBeNull(column=c) for c in schema.RECOMMENDATIONS.names],
        E.ExpectTableRowCountToEqual(
            value=int(manifest["rows"]), meta={"why": "rows recorded in the manifest"}
        ),
        E.ExpectColumnValuesToBeBetween(column=schema.RANK, min_value=1, max_value=int(manifest["k"])),
        E.ExpectCompoundColumnsToBeUnique(column_list=[schema.USER_ID, schema.RANK]),
        E.ExpectCompoundColumnsToBeUnique(column_list=[schema.USER_ID, schema.ITEM_ID]),
        flag(column="user_known", value_set=[True], meta={"why": "user ids in the user ID map"}),
        flag(column="item_known", value_set=[True], meta={"why": "item ids in the item ID map"}),
        flag(column="seen", value_set=[False], meta={"why": "never an item the user interacted with"}),
        flag(column="generated_at_ok", value_set=[True], meta={"why": f"generated_at = {ds} 00:00 UTC"}),
        flag(column=schema.MODEL_NAME, value_set=[manifest["model_name"]]),
        flag(column=schema.MODEL_VERSION, value_set=[str(manifest["model_version"])]),
    ]
    per_user = [
        flag(
            column="rows_ok", value_set=[True], meta={"why": "min(K, index items - seen items) rows per user"}
        ),
        flag(column="ranks_contiguous", value_set=[True], meta={"why": "ranks 1..n without gaps per user"}),
        flag(
            column="scores_non_increasing", value_set=[True], meta={"why": "scores never rise with the rank"}
        ),
        E.ExpectTableRowCountToBeBetween(
            min_value=min_users,
            meta={
                "why": f"user coverage >= {cfg.inference.min_user_coverage:.0%} of "
                f"{frames['active_users']} active users"
            },  # fmt: skip
        ),
    ]
    return {ROWS: rows, PER_USER: per_user}


def _sample_rows(result: dict[str, Any], df: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    kw, kind = result["kwargs"], result["expectation"]
    col = kw.get("column")
    if kind == "expect_column_values_to_not_be_null":
        bad = df[df[col].isna()]
    elif kind == "expect_column_values_to_be_between":
        bad = df[(df[col] < kw.get("min_value")) | (df[col] > kw.get("max_value"))]
    elif kind == "expect_column_values_to_be_in_set":
        bad = df[~df[col].isin(kw["value_set"])]
    elif kind == "expect_compound_columns_to_be_unique":
        bad = df[df.duplicated(kw["column_list"], keep=False)]
    else:
        return []
    return [{k: str(v) for k, v in row.items()} for row in bad.head(n).to_dict("records")]

"""Pipeline task ``validate_recommendations``: the Great Expectations gate on the staged output of a date.

Runs on the version that ``batch_inference`` staged (readers do not see it yet), with GX on pandas:

- exact Arrow schema of every data file (names, types, nullability: the ``RECOMMENDATIONS`` contract);
- no nulls; ``rank`` in 1..K; ``(user_id, rank)`` and ``(user_id, item_id)`` unique; every user and item id in
  the ID maps; never an item of the user's snapshot history; model name/version as in the manifest;
  ``generated_at`` the logical date at 00:00 UTC;
- per user: ``min(K, index items - seen items)`` rows, ranks contiguous 1..n, scores non-increasing by rank,
  all rows in one chunk (below);
- totals: row count as in the manifest; user coverage: users with rows >= ``inference.min_user_coverage`` x
  users with an interaction.

Scale: the output is read in chunks of about ``inference.gate_chunk_rows`` rows, cut between users (both
engines write a user's rows together), and the same row and per-user expectations run on every chunk; the
totals run once on a one-row frame. Memory is one chunk plus the snapshot's arrays, whatever the number of
users: 1M users x 100 rows are 100 chunks of 1M rows (about 6 minutes and 2.2 GB peak RSS on the 2-core
benchmark machine, most of it loading the 9.4M-interaction snapshot). A user whose rows fall into two chunks
fails ``in_one_chunk`` (otherwise a duplicated user could pass every per-chunk check). The counts of a failed
expectation are summed over the chunks.

A failure raises :class:`~tokenrec.errors.DataValidationError` naming the table, each failed expectation, its
counts and sample offending rows; nothing is published. A pass writes ``_validation.json`` into the staged
version with the SHA-256 of its data files, which ``publish`` re-checks. The merged GX result goes to
``<lake>/_validation/recommendations/<ds>/result.json``, with the GX data docs of the last chunk (which holds
the totals) beside it.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import DataValidationError, InputError
from tokenrec.gates.expectations import describe_failure, run_gx_suites
from tokenrec.storage import atomic_write_json, file_sha256, read_json, staged_version

log = logging.getLogger(__name__)

ROWS, PER_USER, TOTALS = "recommendations", "recommendations_per_user", "recommendations_totals"
READ_BATCH_ROWS = 65_536  # Parquet rows read at a time while a chunk fills


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
    outcome, samples = _validate_in_chunks(cfg, ds, lake, manifest, files, report)
    failures = [r for r in outcome["results"] if not r["success"]]
    if failures:
        details = "; ".join(describe_failure(r, samples.get(_result_key(r), [])) for r in failures)
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
    atomic_write_json(version / schema.VALIDATION_FILE, marker)
    log.info(
        "recommendations %s (%s) passed %d expectations on %d chunks",
        ds, version.name, len(outcome["results"]), outcome["chunks"],
    )  # fmt: skip
    return {
        "staged": str(version),
        "expectations": len(outcome["results"]),
        "chunks": outcome["chunks"],
        "report": str(report),
    }


@dataclass
class _Reference:
    """What every chunk is checked against: the snapshot's seen pairs and the ID maps."""

    n_items: int
    seen_keys: np.ndarray  # sorted distinct user_idx * n_items + item_idx of the snapshot
    distinct_seen: np.ndarray  # (n_users,) distinct items per user
    user_ids: pa.Array  # raw id by user index
    item_ids: pa.Array  # raw id by item index
    in_earlier_chunk: np.ndarray  # (n_users,) bool: the user had rows in a chunk already validated

    @classmethod
    def load(cls, lake: schema.Lake, ds: str) -> _Reference:
        data = InteractionData.load(lake.interactions(ds))
        seen_keys = np.unique(data.users * data.n_items + data.items)
        user_ids = read_id_map(lake.id_map(schema.USERS)).column(schema.RAW_ID).combine_chunks()
        item_ids = read_id_map(lake.id_map(schema.ITEMS)).column(schema.RAW_ID).combine_chunks()
        distinct_seen = np.bincount(seen_keys // data.n_items, minlength=max(data.n_users, len(user_ids)))
        return cls(data.n_items, seen_keys, distinct_seen, user_ids, item_ids,
                   np.zeros(len(distinct_seen), dtype=bool))  # fmt: skip

    @property
    def active_users(self) -> int:
        return int((self.distinct_seen > 0).sum())


def _chunks(files: list[Path], chunk_rows: int) -> Iterator[pa.Table]:
    """The rows of ``files`` in name order, about ``chunk_rows`` at a time, never splitting a user's run."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=min(READ_BATCH_ROWS, chunk_rows)):
            pending.append(batch)
            size += batch.num_rows
            if size < chunk_rows:
                continue
            table = pa.Table.from_batches(pending)
            users = table.column(schema.USER_ID)
            last = users[-1]
            others = np.flatnonzero(pc.not_equal(users, last).to_numpy(zero_copy_only=False))
            if not len(others):
                continue  # one user so far: keep reading
            cut = int(others[-1]) + 1  # the trailing run of the last user waits for the next chunk
            yield table.slice(0, cut)
            pending = table.slice(cut).to_batches()
            size = table.num_rows - cut
    if size:
        yield pa.Table.from_batches(pending)


def _frames(chunk: pa.Table, ds: str, manifest: dict[str, Any], ref: _Reference) -> dict[str, Any]:
    """One chunk's rows with derived check columns, and one row per user with the per-user checks."""
    user_pos = pc.index_in(chunk.column(schema.USER_ID), value_set=ref.user_ids)  # = user index (maps by idx)
    item_pos = pc.index_in(chunk.column(schema.ITEM_ID), value_set=ref.item_ids)
    rows = chunk.to_pandas()
    user_idx = np.asarray(user_pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    item_idx = np.asarray(item_pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    rows["user_known"] = user_idx >= 0
    rows["item_known"] = item_idx >= 0
    keys = user_idx * ref.n_items + item_idx
    at = np.minimum(np.searchsorted(ref.seen_keys, keys), max(len(ref.seen_keys) - 1, 0))
    hit = ref.seen_keys[at] == keys if len(ref.seen_keys) else np.zeros(len(keys), dtype=bool)
    rows["seen"] = hit & (user_idx >= 0) & (item_idx >= 0) & (item_idx < ref.n_items)
    expected_at = pd.Timestamp(schema.parse_ds(ds).isoformat(), tz="UTC")
    rows["generated_at_ok"] = rows[schema.GENERATED_AT] == expected_at

    ordered = rows.sort_values([schema.USER_ID, schema.RANK], kind="stable")
    group = ordered.groupby(schema.USER_ID, sort=True)
    position = group.cumcount() + 1
    sizes = group.size()
    score_step = group[schema.SCORE].diff()
    by_user = ordered[schema.USER_ID]
    first_idx = pd.Series(user_idx, index=rows.index).loc[ordered.index].groupby(by_user).first()
    per_user = pd.DataFrame(
        {
            "n_rows": sizes,
            "ranks_contiguous": (ordered[schema.RANK] == position).groupby(ordered[schema.USER_ID]).all(),
            "scores_non_increasing": (score_step.isna() | (score_step <= 0))
            .groupby(ordered[schema.USER_ID])
            .all(),
        }
    )
    known = first_idx.to_numpy() >= 0
    idx = np.where(known, first_idx.to_numpy(), 0)
    seen_count = np.where(known, ref.distinct_seen[idx], 0)
    per_user["expected_rows"] = np.minimum(int(manifest["k"]), int(manifest["index_items"]) - seen_count)
    per_user["rows_ok"] = per_user["n_rows"] == per_user["expected_rows"]
    per_user["in_one_chunk"] = ~(known & ref.in_earlier_chunk[idx])
    ref.in_earlier_chunk[idx[known]] = True
    per_user = per_user.reset_index().rename(columns={"index": schema.USER_ID})
    return {ROWS: rows, PER_USER: per_user}


def _expectations(manifest: dict[str, Any], ds: str) -> dict[str, list]:
    """The row-level and per-user expectations every chunk must meet."""
    import great_expectations as gx

    E = gx.expectations
    flag = E.ExpectColumnValuesToBeInSet
    rows = [
        E.ExpectTableColumnsToMatchOrderedList(
            column_list=[*schema.RECOMMENDATIONS.names, "user_known", "item_known", "seen", "generated_at_ok"]
        ),  # fmt: skip
        *[E.ExpectColumnValuesToNotBeNull(column=c) for c in schema.RECOMMENDATIONS.names],
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
        flag(column="in_one_chunk", value_set=[True], meta={"why": "a user's rows are written together"}),
    ]
    return {ROWS: rows, PER_USER: per_user}


def _totals(cfg: Config, manifest: dict[str, Any], rows: int, users: int, active: int) -> tuple[Any, list]:
    """The one-row totals frame and its expectations: rows as in the manifest, user coverage."""
    import great_expectations as gx

    E = gx.expectations
    min_users = math.ceil(cfg.inference.min_user_coverage * active)
    frame = pd.DataFrame({"rows": [rows], "users": [users]})
    expectations = [
        E.ExpectColumnValuesToBeBetween(
            column="rows", min_value=int(manifest["rows"]), max_value=int(manifest["rows"]),
            meta={"why": f"{manifest['rows']} rows recorded in the manifest"},
        ),
        E.ExpectColumnValuesToBeBetween(
            column="users", min_value=min_users,
            meta={"why": f"user coverage >= {cfg.inference.min_user_coverage:.0%} of {active} active users"},
        ),
    ]  # fmt: skip
    return frame, expectations


def _validate_in_chunks(
    cfg: Config, ds: str, lake: schema.Lake, manifest: dict[str, Any], files: list[Path], report: Path
) -> tuple[dict[str, Any], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Run the suites on every chunk and the totals once; the merged GX outcome and sample offending rows.

    Each chunk's GX run writes into a scratch folder; the last run (the last chunk, with the totals) keeps
    its data docs in ``report``; ``report/result.json`` holds the results merged over all chunks.
    """
    ref = _Reference.load(lake, ds)
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    n = cfg.inference.sample_rows
    rows = users = n_chunks = 0
    chunks = _chunks(files, cfg.inference.gate_chunk_rows)
    chunk = next(chunks, None)
    with tempfile.TemporaryDirectory(prefix="tokenrec-gate-") as scratch:
        while chunk is not None:
            following = next(chunks, None)
            frames = _frames(chunk, ds, manifest, ref)
            rows += len(frames[ROWS])
            users += len(frames[PER_USER])
            run_suites = _expectations(manifest, ds)  # fresh objects: GX binds an expectation to one suite
            if following is None:  # the last chunk: the totals are complete
                frames[TOTALS], run_suites[TOTALS] = _totals(cfg, manifest, rows, users, ref.active_users)
            out = report if following is None else Path(scratch) / f"chunk-{n_chunks}"
            outcome = run_gx_suites(frames, run_suites, ds, out, "pandas", n)
            for result in outcome["results"]:
                key = _result_key(result)
                merged[key] = _merge(merged.get(key), result, n)
                if not result["success"] and len(samples.get(key, [])) < n:
                    found = _sample_rows(result, frames[result["suite"]], n)
                    samples[key] = [*samples.get(key, []), *found][:n]
            n_chunks += 1
            chunk = following
    if n_chunks == 0:  # files without a single row: the totals alone (they fail on the manifest's rows)
        frames = {}
        frames[TOTALS], totals = _totals(cfg, manifest, 0, 0, ref.active_users)
        for result in run_gx_suites(frames, {TOTALS: totals}, ds, report, "pandas", n)["results"]:
            merged[_result_key(result)] = result
    results = list(merged.values())
    success = all(r["success"] for r in results)
    outcome = {"success": success, "ds": ds, "chunks": n_chunks, "results": results}
    atomic_write_json(report / "result.json", outcome)
    return outcome, samples


def _result_key(result: dict[str, Any]) -> tuple[str, str]:
    kwargs = {k: v for k, v in result["kwargs"].items() if k != "batch_id"}
    return result["suite"], f"{result['expectation']}{json.dumps(kwargs, sort_keys=True)}"


def _merge(into: dict[str, Any] | None, result: dict[str, Any], sample_rows: int) -> dict[str, Any]:
    """``result`` of one chunk added to the merged result of the chunks before: success and counts summed."""
    if into is None:
        return result
    merged = {**into, "success": into["success"] and result["success"]}
    before, now = into["result"], result["result"]
    summed = {k: before[k] + now[k] for k in ("element_count", "unexpected_count", "missing_count")
              if isinstance(before.get(k), int) and isinstance(now.get(k), int)}  # fmt: skip
    if summed.get("element_count"):
        summed["unexpected_percent"] = 100.0 * summed.get("unexpected_count", 0) / summed["element_count"]
    partial = [*before.get("partial_unexpected_list", []), *now.get("partial_unexpected_list", [])]
    merged["result"] = {**before, **summed, "partial_unexpected_list": partial[:sample_rows]}
    return merged


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

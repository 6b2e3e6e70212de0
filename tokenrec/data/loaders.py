"""Loaders for real raw formats, each into one event table (user id, item id, event time, optional rating).

Every loader reads its files as text lines (Parquet: as rows), so that no record can vanish: each raw record
becomes exactly one row of ``records`` with a ``reason`` that is null when the record is valid, and the valid
records become ``events``. Hence, always, raw rows = valid rows + quarantined rows (R3). CSV and JSON lines are
parsed with an explicit all-string schema and a corrupt-record column; too few or too many fields, empty ids,
non-numeric times and ratings are caught by explicit checks, each with a reason that names the field.

Formats (``source.format``):
    movielens_inter  RecBole atomic file (ml-100k.inter): tab-separated, header ``user_id:token item_id:token
                     rating:float timestamp:float``
    movielens_dat    ML-1M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, no header
    user_sequence    ``user item item ...`` one user per line in time order; position is the timestamp
    csv              delimited with a header; column names from ``source.*_col``
    jsonl            one JSON object per line; keys from ``source.*_col``
    parquet          columns from ``source.*_col``
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenrec import schema
from tokenrec.config import SourceConfig
from tokenrec.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

CORRUPT = "_corrupt_record"
VALUE = "value"
MAX_EPOCH_SECONDS = 1e11  # ~ year 5138: anything beyond is a unit mistake, not a date
_UNIT_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6}
_DT_PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


@dataclass
class ParsedSource:
    """What a loader returns.

    Attributes:
        records: one row per raw record: source_file, line_no, raw, reason (null = valid).
        events: one row per event of the valid records: source_file, line_no, user_id, item_id, event_ts, rating.
        files: the files that were read.
    """

    records: DataFrame
    events: DataFrame
    files: list[str]


# ------------------------------------------------------------------------------------------------ files


def list_source_files(path: str, ds: dt.date | None = None) -> list[str]:
    """The files to read for ``path``: a file, every visible file below a folder, or, for a folder of
    ``dt=YYYY-MM-DD`` landing partitions, the files of every partition up to ``ds``.

    Non-local URIs (``s3a://``, ``hdfs://``) are passed to Spark as they are.
    """
    if "://" in path and not path.startswith("file://"):
        return [path]
    root = Path(path.removeprefix("file://")).expanduser()
    if not root.exists():
        raise InputError(root, "the source path does not exist", "check source.path (or --dataset) and rerun")
    if root.is_file():
        return [str(root.resolve())]
    files = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).parts
        if not file.is_file() or any(p.startswith((".", "_")) for p in rel):
            continue
        partitions = [m.group(1) for p in rel[:-1] if (m := _DT_PARTITION.match(p))]
        if ds is not None and partitions and dt.date.fromisoformat(partitions[-1]) > ds:
            continue  # landed after the logical date: not part of this snapshot
        files.append(str(file.resolve()))
    if not files:
        raise InputError(root, "the source folder holds no data files", "land the raw files there and rerun")
    return files


def _read_lines(spark: SparkSession, files: list[str]) -> DataFrame:
    """(source_file, line_no, value): one row per physical line, numbered from 1 within each file.

    Line numbers are computed like ``zipWithIndex``, without sorting a whole file in one task: each file block
    (a split Spark reads in parallel) is counted once, the driver turns the counts into per-block offsets, and
    a row's number is its block's offset plus its position within the block. Empty files fail here.
    """
    from pyspark.sql import functions as F

    raw = spark.read.text(files).select(
        F.col("_metadata.file_path").alias(schema.SOURCE_FILE),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_pos"),
        F.col(VALUE),
    )
    blocks = raw.groupBy(schema.SOURCE_FILE, "_block").agg(F.count("*").alias("n"), F.min("_pos").alias("_first"))
    offsets, seen, running = [], set(), {}
    for row in sorted(blocks.collect(), key=lambda r: (r[schema.SOURCE_FILE], r["_block"])):
        file = row[schema.SOURCE_FILE]
        offsets.append((file, row["_block"], row["_first"], running.get(file, 0)))
        running[file] = running.get(file, 0) + row["n"]
        seen.add(_local(file))
    for file in files:
        if "://" not in file and _local(file) not in seen:
            raise InputError(file, "the file is empty", "check the export that produced it, or remove it")
    offset_df = spark.createDataFrame(
        offsets, f"{schema.SOURCE_FILE} STRING, _block BIGINT, _first BIGINT, _offset BIGINT"
    )
    return raw.join(F.broadcast(offset_df), [schema.SOURCE_FILE, "_block"]).select(
        schema.SOURCE_FILE,
        (F.col("_offset") + F.col("_pos") - F.col("_first") + 1).alias(schema.LINE_NO),
        VALUE,
    )


def _local(path: str) -> str:
    """``file:/a/b``, ``file:///a/b`` and ``/a/b`` all become ``/a/b``."""
    return str(Path(urllib.parse.unquote(urllib.parse.urlparse(path).path)).resolve())


# ---------------------------------------------------------------------------------------- shared checks


def _first_failure(checks: list[tuple[Column, Column | str]]) -> Column:
    """A reason column: the message of the first check whose condition is true, else null."""
    from pyspark.sql import functions as F

    expr = None
    for condition, message in checks:
        msg = message if not isinstance(message, str) else F.lit(message)
        expr = F.when(condition, msg) if expr is None else expr.when(condition, msg)
    return expr.otherwise(F.lit(None).cast("string"))


def _quoted(col: Column, limit: int = 40) -> Column:
    from pyspark.sql import functions as F

    return F.concat(F.lit("'"), F.substring(col, 1, limit), F.lit("'"))


def _time_checks(raw_time: Column, source: SourceConfig, field: str) -> tuple[list, Column]:
    """Checks for the event time field and the timestamp column that is valid when the checks pass."""
    from pyspark.sql import functions as F

    if source.time_unit == "iso":
        parsed = F.try_to_timestamp(raw_time)
        checks = [
            (raw_time.isNull() | (F.trim(raw_time) == ""), f"{field}: missing"),
            (parsed.isNull(), F.concat(F.lit(f"{field}: "), _quoted(raw_time), F.lit(" is not an ISO-8601 time"))),
        ]
        return checks, parsed
    number = raw_time.try_cast("double")
    seconds = number / F.lit(_UNIT_PER_SECOND[source.time_unit])
    in_range = F.abs(seconds) < F.lit(MAX_EPOCH_SECONDS)  # false for NaN and infinities too
    checks = [
        (raw_time.isNull() | (F.trim(raw_time) == ""), f"{field}: missing"),
        (number.isNull(), F.concat(F.lit(f"{field}: "), _quoted(raw_time), F.lit(" is not a number"))),
        (~in_range, F.concat(F.lit(f"{field}: "), _quoted(raw_time), F.lit(f" is out of range for unit {source.time_unit}"))),
    ]
    safe_seconds = F.when(in_range, seconds).otherwise(F.lit(0.0))
    ts = F.timestamp_micros(F.round(safe_seconds * F.lit(1e6)).cast("bigint"))
    return checks, ts


def _rating_checks(raw_rating: Column | None, field: str) -> tuple[list, Column]:
    from pyspark.sql import functions as F

    if raw_rating is None:
        return [], F.lit(None).cast("double")
    number = raw_rating.try_cast("double")
    checks = [
        (raw_rating.isNull() | (F.trim(raw_rating) == ""), f"{field}: missing"),
        (number.isNull() | F.isnan(number), F.concat(F.lit(f"{field}: "), _quoted(raw_rating), F.lit(" is not a number"))),
    ]
    return checks, number


def _id_checks(col: Column, field: str) -> list:
    from pyspark.sql import functions as F

    return [(col.isNull() | (F.trim(col) == ""), f"{field}: missing")]


def _finish(
    rows: DataFrame,
    reason: Column,
    user: Column,
    item: Column,
    ts: Column,
    rating: Column,
    raw: Column,
    files: list[str],
) -> ParsedSource:
    from pyspark.sql import functions as F

    parsed = rows.select(
        schema.SOURCE_FILE,
        schema.LINE_NO,
        raw.alias(schema.RAW),
        reason.alias(schema.REASON),
        F.trim(user).alias(schema.USER_ID),
        F.trim(item).alias(schema.ITEM_ID),
        ts.alias(schema.EVENT_TS),
        rating.alias(schema.RATING),
    ).cache()
    records = parsed.select(schema.SOURCE_FILE, schema.LINE_NO, schema.RAW, schema.REASON)
    events = parsed.where(F.col(schema.REASON).isNull()).select(
        schema.SOURCE_FILE, schema.LINE_NO, schema.USER_ID, schema.ITEM_ID, schema.EVENT_TS, schema.RATING
    )
    return ParsedSource(records=records, events=events, files=files)


# ---------------------------------------------------------------------------------------------- formats


def _split_format(
    spark: SparkSession, source: SourceConfig, files: list[str], sep_regex: str, sep_name: str,
    fields: list[str], header: bool,
) -> ParsedSource:
    """Delimited text without quoting (RecBole .inter, ML-1M .dat): split, count fields, check each."""
    from pyspark.sql import functions as F

    lines = _read_lines(spark, files)
    if header:
        fields = _header_fields(lines, files, sep_regex, sep_name)
        lines = lines.where(F.col(schema.LINE_NO) > 1)
    want = {"user": "user_id", "item": "item_id", "time": "timestamp", "rating": "rating"}
    pos = {}
    for role, name in want.items():
        if name in fields:
            pos[role] = fields.index(name)
        elif role != "rating":
            raise InputError(
                files[0], f"the header names no {name!r} column (found {', '.join(fields)})",
                "use a file with that column or choose another source.format", field=name,
            )
    parts = F.split(F.col(VALUE), sep_regex, -1)
    n = F.size(parts)
    value = F.col(VALUE)
    user, item, raw_time = (F.get(parts, pos[r]) for r in ("user", "item", "time"))
    raw_rating = F.get(parts, pos["rating"]) if "rating" in pos else None
    time_checks, ts = _time_checks(raw_time, source, want["time"])
    rating_checks, rating = _rating_checks(raw_rating, "rating")
    checks = [
        (F.trim(value) == "", "empty line"),
        (n != len(fields), F.concat(
            F.lit(f"expected {len(fields)} fields separated by {sep_name}, got "), n.cast("string"))),
        *_id_checks(user, want["user"]),
        *_id_checks(item, want["item"]),
        *time_checks,
        *rating_checks,
    ]
    return _finish(lines, _first_failure(checks), user, item, ts, rating, value, files)


def _header_fields(lines: DataFrame, files: list[str], sep_regex: str, sep_name: str) -> list[str]:
    """Column names of the header (``user_id:token`` -> ``user_id``); every file must have the same header."""
    from pyspark.sql import functions as F

    headers = {r[schema.SOURCE_FILE]: r[VALUE] for r in lines.where(F.col(schema.LINE_NO) == 1).collect()}
    distinct = set(headers.values())
    if len(distinct) > 1:
        raise InputError(
            sorted(headers)[-1], f"the files have different headers: {sorted(distinct)}",
            "give every landed file the same header",
        )
    header = distinct.pop()
    fields = [f.split(":")[0].strip() for f in re.split(sep_regex, header)]
    if len(fields) == 1:
        raise InputError(
            next(iter(headers)), f"the header {header[:60]!r} has a single column when split by {sep_name}",
            f"the file is not {sep_name}-separated: check the export or source.format",
        )
    return fields


def _user_sequence(spark: SparkSession, source: SourceConfig, files: list[str]) -> ParsedSource:
    """``user item item ...`` per line; an item's position (0, 1, ...) is its timestamp in seconds."""
    from pyspark.sql import functions as F

    lines = _read_lines(spark, files)
    value = F.col(VALUE)
    tokens = F.split(F.trim(value), r"\s+", -1)
    checks = [
        (F.trim(value) == "", "empty line"),
        (F.size(tokens) < 2, "no items after the user id (expected 'user item item ...')"),
    ]
    parsed = lines.select(
        schema.SOURCE_FILE, schema.LINE_NO, value.alias(schema.RAW),
        _first_failure(checks).alias(schema.REASON), tokens.alias("_tokens"),
    ).cache()
    records = parsed.select(schema.SOURCE_FILE, schema.LINE_NO, schema.RAW, schema.REASON)
    valid = parsed.where(F.col(schema.REASON).isNull())
    exploded = valid.select(
        schema.SOURCE_FILE, schema.LINE_NO, F.get("_tokens", 0).alias(schema.USER_ID),
        F.posexplode(F.slice("_tokens", 2, F.size("_tokens") - 1)).alias("_pos", schema.ITEM_ID),
    )
    events = exploded.select(
        schema.SOURCE_FILE, schema.LINE_NO, schema.USER_ID, schema.ITEM_ID,
        F.timestamp_seconds(F.col("_pos").cast("bigint")).alias(schema.EVENT_TS),
        F.lit(None).cast("double").alias(schema.RATING),
    )
    return ParsedSource(records=records, events=events, files=files)


def _named_columns(source: SourceConfig) -> dict[str, str]:
    cols = {"user": source.user_col, "item": source.item_col, "time": source.time_col}
    if source.rating_col:
        cols["rating"] = source.rating_col
    return cols


def _csv(spark: SparkSession, source: SourceConfig, files: list[str]) -> ParsedSource:
    from pyspark.sql import functions as F

    lines = _read_lines(spark, files)
    cols = _named_columns(source)
    if source.header:
        headers = {r[schema.SOURCE_FILE]: r[VALUE] for r in lines.where(F.col(schema.LINE_NO) == 1).collect()}
        header_line = headers[min(headers)]
        fields = next(csv.reader(io.StringIO(header_line), delimiter=source.delimiter))
        fields = [f.strip() for f in fields]
        if len(fields) == 1:
            other = next((d for d in [",", "\t", ";", "|"] if d != source.delimiter and d in header_line), None)
            hint = f"the file seems to use {other!r}: set source.delimiter" if other else "check source.delimiter"
            raise InputError(min(headers), f"the header {header_line[:60]!r} has a single column", hint)
        for file, line in headers.items():
            if line != header_line:
                raise InputError(file, f"its header differs from {min(headers)}'s", "give every file the same header")
        lines = lines.where(F.col(schema.LINE_NO) > 1)
    else:
        fields = [source.user_col, source.item_col, source.time_col] + ([source.rating_col] if source.rating_col else [])
    for role, name in cols.items():
        if name not in fields:
            raise InputError(
                files[0], f"no column {name!r} in the header (found {', '.join(fields)})",
                f"set source.{role}_col to the right name", field=name,
            )
    # Explicit schema (every header column as a string) with a corrupt-record column: PERMISSIVE parsing flags
    # rows with too few or too many fields and broken quoting there instead of padding or truncating them.
    ddl = ", ".join(f"`c{i}` STRING" for i in range(len(fields))) + f", `{CORRUPT}` STRING"
    options = {"sep": source.delimiter, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    row = F.from_csv(F.col(VALUE), ddl, options)
    get = {role: row[f"c{fields.index(name)}"] for role, name in cols.items()}
    n_naive = F.size(F.split(F.col(VALUE), re.escape(source.delimiter), -1))
    corrupt_reason = F.concat(
        F.lit(f"unparsable CSV record: expected {len(fields)} fields separated by {source.delimiter!r}, got "),
        n_naive.cast("string"), F.lit(" (or broken quoting)"),
    )
    return _finish_named(lines, source, cols, get, row[CORRUPT], corrupt_reason, files)


def _jsonl(spark: SparkSession, source: SourceConfig, files: list[str]) -> ParsedSource:
    from pyspark.sql import functions as F

    lines = _read_lines(spark, files)
    cols = _named_columns(source)
    ddl = ", ".join(f"`{name}` STRING" for name in cols.values()) + f", `{CORRUPT}` STRING"
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    row = F.from_json(F.col(VALUE), ddl, options)
    get = {role: row[name] for role, name in cols.items()}
    return _finish_named(lines, source, cols, get, row[CORRUPT], F.lit("not a JSON object"), files)


def _finish_named(
    lines: DataFrame, source: SourceConfig, cols: dict[str, str], get: dict[str, Column],
    corrupt: Column, corrupt_reason: Column, files: list[str],
) -> ParsedSource:
    """Checks shared by CSV and JSON lines, whose fields are found by column name."""
    from pyspark.sql import functions as F

    value = F.col(VALUE)
    time_checks, ts = _time_checks(get["time"], source, cols["time"])
    rating_checks, rating = _rating_checks(get.get("rating"), cols.get("rating", "rating"))
    checks = [(F.trim(value) == "", "empty line"), (corrupt.isNotNull(), corrupt_reason)]
    checks += [*_id_checks(get["user"], cols["user"]), *_id_checks(get["item"], cols["item"])]
    checks += [*time_checks, *rating_checks]
    return _finish(lines, _first_failure(checks), get["user"], get["item"], ts, rating, value, files)


def _parquet(spark: SparkSession, source: SourceConfig, files: list[str]) -> ParsedSource:
    from pyspark.sql import functions as F

    try:
        df = spark.read.parquet(*files)
    except Exception as exc:  # AnalysisException and friends: unreadable footer, not Parquet
        raise InputError(files[0], f"cannot be read as Parquet ({type(exc).__name__})", "check source.format") from None
    cols = _named_columns(source)
    for role, name in cols.items():
        if name not in df.columns:
            raise InputError(
                files[0], f"no column {name!r} (found {', '.join(df.columns)})",
                f"set source.{role}_col to the right name", field=name,
            )
    time_type = dict(df.dtypes)[cols["time"]]
    rows = df.select(
        F.col("_metadata.file_path").alias(schema.SOURCE_FILE),
        (F.col("_metadata.row_index") + 1).alias(schema.LINE_NO),  # row number within its Parquet file
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns])).alias(VALUE),
        *[F.col(f"`{name}`").alias(f"_{role}") for role, name in cols.items()],
    )
    if time_type.startswith("timestamp"):
        ts = F.col("_time").cast("timestamp")
        time_checks = [(F.col("_time").isNull(), f"{cols['time']}: missing")]
    else:
        time_checks, ts = _time_checks(F.col("_time").cast("string"), source, cols["time"])
    rating_checks, rating = _rating_checks(
        F.col("_rating").cast("string") if "rating" in cols else None, cols.get("rating", "rating")
    )
    user, item = F.col("_user").cast("string"), F.col("_item").cast("string")
    checks = [*_id_checks(user, cols["user"]), *_id_checks(item, cols["item"]), *time_checks, *rating_checks]
    return _finish(rows, _first_failure(checks), user, item, ts, rating, F.col(VALUE), files)


def load_source(spark: SparkSession, source: SourceConfig, path: str, ds: dt.date | None = None) -> ParsedSource:
    """Read the raw source at ``path`` in ``source.format`` into records and events (see module docstring)."""
    files = list_source_files(path, ds)
    fmt = source.format
    if fmt == "movielens_inter":
        return _split_format(spark, source, files, "\t", "tabs", [], header=True)
    if fmt == "movielens_dat":
        return _split_format(spark, source, files, "::", "'::'", ["user_id", "item_id", "rating", "timestamp"], header=False)
    if fmt == "user_sequence":
        return _user_sequence(spark, source, files)
    if fmt == "csv":
        return _csv(spark, source, files)
    if fmt == "jsonl":
        return _jsonl(spark, source, files)
    if fmt == "parquet":
        return _parquet(spark, source, files)
    raise ValueError(f"unknown source.format {fmt!r}")  # unreachable: SourceConfig validates

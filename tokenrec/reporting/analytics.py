"""Analyst queries over the published outputs: ``tokenrec sql NAME --ds D`` runs ``sql/analytics/NAME.sql``.

The lake tables are registered as Spark temp views (``recommendations`` with partition column ``dt``,
``interactions`` with ``snapshot_date``, ``id_map_users``, ``id_map_items``), each with the exact schema of
:mod:`tokenrec.schema`; a table that does not exist yet is an empty view, so a query returns no rows
instead of failing. Published partitions are links to ``_versions/...`` folders; Spark follows them and
skips every folder starting with ``_`` or ``.``.

Each query file starts with a dbt-style header that this module reads (see docs/ANALYTICS.md)::

    -- fct_user_top_k: the recommendation list one user received on day :ds, best first.
    -- params : ds (date), user_id (string), k (int) = 20
    -- output columns:
    --   dt   date   the recommendations partition (= :ds)

``ds`` comes from ``--ds``; the other parameters from ``--param name=value`` (a parameter without a default
must be given). ``--set section.key=value`` and ``--config`` configure tokenrec as in every other stage
(``paths.lake``, ``spark.master``, ...).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tokenrec import schema
from tokenrec.errors import ConfigError, TokenrecError
from tokenrec.reporting.sql import run_sql, sql_root

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

ANALYTICS_DIR = "analytics"
FORMATS = ("table", "csv", "json")

_PARAM = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*)\s*\((?P<type>date|string|int|float)\)(?:\s*=\s*(?P<default>\S+))?$"
)
_COLUMN = re.compile(
    r"^--\s{2,}(?P<name>[a-z_][a-z0-9_]*)\s+"
    r"(?P<type>date|string|smallint|int|bigint|float|double|boolean|timestamp)\s"
)
_ARROW_TO_SPARK = {
    pa.string(): "STRING",
    pa.int16(): "SMALLINT",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.date32(): "DATE",
    schema.UTC_TS: "TIMESTAMP",
}


# ------------------------------------------------------------------------------------------------ queries


@dataclass(frozen=True)
class Param:
    """One ``:name`` parameter of a query, as declared in its header."""

    name: str
    type: str  # date, string, int or float
    default: str | None = None  # None: the caller must give it

    def coerce(self, raw: Any) -> Any:
        """The value as the Python type Spark binds as a literal of the declared SQL type."""
        try:
            if self.type == "date":
                return schema.parse_ds(str(raw)) if not isinstance(raw, dt.date) else raw
            if self.type == "int":
                return int(raw)
            if self.type == "float":
                return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"query parameter {self.name} must be {self.type}, got {raw!r}") from None
        return str(raw)


@dataclass(frozen=True)
class Query:
    """A query file of ``sql/analytics/`` and what its header declares."""

    name: str
    summary: str
    params: tuple[Param, ...]
    columns: tuple[str, ...] = field(default=())  # the OUTPUT COLUMNS, in order

    def bind(self, ds: str, given: dict[str, str]) -> dict[str, Any]:
        """The ``:param`` values: ``ds`` plus ``given`` (strings from the command line) over the defaults."""
        names = {p.name for p in self.params}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ConfigError(
                f"query {self.name} has no parameter {', '.join(unknown)}; "
                f"its parameters: {', '.join(sorted(names))}"
            )
        values: dict[str, Any] = {}
        for param in self.params:
            raw = ds if param.name == "ds" else given.get(param.name, param.default)
            if raw is None:
                raise ConfigError(f"query {self.name} needs --param {param.name}=<{param.type}>")
            values[param.name] = param.coerce(raw)
        return values


def analytics_dir() -> Path:
    return sql_root() / ANALYTICS_DIR


def parse_header(name: str, text: str) -> Query:
    """Read the summary, ``params`` and ``output columns`` of a query file's header comment."""
    lines = [line.rstrip() for line in text.splitlines()]
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line)
    if not header or not header[0].startswith(f"-- {name}:"):
        raise ConfigError(f"{ANALYTICS_DIR}/{name}.sql must start with '-- {name}: <what it answers>'")
    summary = header[0].split(":", 1)[1].strip()
    params: list[Param] = []
    columns: list[str] = []
    in_columns = False
    for line in header[1:]:
        body = line[2:].strip()
        if body.startswith("params"):
            for item in body.split(":", 1)[1].split(","):
                match = _PARAM.match(item.strip())
                if not match:
                    raise ConfigError(
                        f"{ANALYTICS_DIR}/{name}.sql: bad parameter {item.strip()!r} in the header"
                    )
                params.append(Param(match["name"], match["type"], match["default"]))
        elif body.lower().startswith("output columns"):
            in_columns = True
        elif in_columns and (match := _COLUMN.match(line)):
            columns.append(match["name"])
    if "ds" not in {p.name for p in params}:
        raise ConfigError(f"{ANALYTICS_DIR}/{name}.sql must declare the parameter 'ds (date)'")
    return Query(name, summary, tuple(params), tuple(columns))


def list_queries() -> list[Query]:
    """Every query of ``sql/analytics/``, sorted by name."""
    return [parse_header(path.stem, path.read_text()) for path in sorted(analytics_dir().glob("*.sql"))]


def get_query(name: str) -> Query:
    path = analytics_dir() / f"{name}.sql"
    if "/" in name or not path.is_file():
        available = ", ".join(q.name for q in list_queries())
        raise ConfigError(f"no analytics query {name!r} in {analytics_dir()}; available: {available}")
    return parse_header(name, path.read_text())


# ------------------------------------------------------------------------------------------------ views


def spark_ddl(arrow_schema: pa.Schema, **extra: str) -> str:
    """Spark DDL for an Arrow schema of :mod:`tokenrec.schema`, plus ``extra`` columns (name=TYPE)."""
    cols = [f"`{f.name}` {_ARROW_TO_SPARK[f.type]}" for f in arrow_schema]
    return ", ".join(cols + [f"`{name}` {kind}" for name, kind in extra.items()])


def register_lake_views(spark: SparkSession, lake: schema.Lake) -> dict[str, str]:
    """Register ``recommendations``, ``interactions``, ``id_map_users``, ``id_map_items`` over ``lake``.

    Returns:
        view name -> the folder it reads ("" for an empty view over a table that does not exist yet).
    """
    tables = {
        "recommendations": (
            lake.table(schema.RECOMMENDATIONS_TABLE),
            spark_ddl(schema.RECOMMENDATIONS, **{schema.DT_KEY: "DATE"}),
        ),
        "interactions": (
            lake.table(schema.INTERACTIONS_TABLE),
            spark_ddl(schema.INTERACTIONS, **{schema.SNAPSHOT_KEY: "DATE"}),
        ),
        "id_map_users": (lake.id_map(schema.USERS), spark_ddl(schema.ID_MAP)),
        "id_map_items": (lake.id_map(schema.ITEMS), spark_ddl(schema.ID_MAP)),
    }
    registered: dict[str, str] = {}
    for view, (folder, ddl) in tables.items():
        if _has_parquet(folder):
            df = spark.read.schema(ddl).parquet(str(folder))
            registered[view] = str(folder)
        else:
            log.warning("%s has no published data yet: view %s is empty", folder, view)
            df = spark.createDataFrame([], ddl)
            registered[view] = ""
        df.createOrReplaceTempView(view)
    return registered


def _has_parquet(folder: Path) -> bool:
    """Any Parquet file below ``folder`` outside ``_``/``.`` folders (following partition links)."""
    if not folder.is_dir():
        return False
    for child in folder.iterdir():
        if child.name.startswith(("_", ".")):
            continue
        if child.is_file() and child.suffix == ".parquet":
            return True
        if child.is_dir() and _has_parquet(child):
            return True
    return False


def run_query(spark: SparkSession, name: str, ds: str, params: dict[str, str] | None = None) -> DataFrame:
    """Run ``sql/analytics/<name>.sql`` for day ``ds`` (after :func:`register_lake_views`)."""
    query = get_query(name)
    return run_sql(spark, f"{ANALYTICS_DIR}/{name}", **query.bind(ds, params or {}))


# ------------------------------------------------------------------------------------------------ output


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def format_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    """Rows as an aligned text table, CSV (with a header line) or a JSON array of objects."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=_cell, indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in row] for row in rows])
        return buffer.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenrec sql",
        description="Run an analyst query of sql/analytics/ with Spark SQL over the lake (docs/ANALYTICS.md)",
    )
    parser.add_argument("name", nargs="?", help="query name (see --list), e.g. fct_user_top_k")
    parser.add_argument("--list", action="store_true", help="list the queries with their parameters and exit")
    parser.add_argument("--ds", help="logical date YYYY-MM-DD: the day the query looks at (:ds)")
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a query parameter, e.g. --param user_id=196 (repeatable)",
    )
    parser.add_argument("--dataset", help="named data set preset (as for the other stages)")
    parser.add_argument("--config", help="YAML config file (paths.lake, spark.*)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set paths.lake=/data/lake (repeatable)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--limit", type=int, help="print at most this many rows")
    return parser


def _key_values(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects name=value, got {item!r}")
        out[key.strip()] = value
    return out


def _describe(query: Query) -> str:
    params = ", ".join(p.name + (f"={p.default}" if p.default is not None else "") for p in query.params)
    return f"{query.name:<28}{query.summary}\n{'':<28}params: {params}"


def main(argv: list[str] | None = None) -> int:
    """``tokenrec sql``: list the queries, or run one and print its rows. Returns the exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    try:
        if args.list:
            print("\n".join(_describe(q) for q in list_queries()))
            return 0
        if not args.name or not args.ds:
            raise ConfigError("give a query name and --ds YYYY-MM-DD (or --list to see the queries)")
        if args.limit is not None and args.limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {args.limit}")
        query = get_query(args.name)
        query.bind(args.ds, _key_values(args.params))  # fail on bad parameters before Spark starts
        print(_run(args, query))
    except TokenrecError as exc:
        print(f"tokenrec sql: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace, query: Query) -> str:
    from tokenrec.config import load_config
    from tokenrec.data.spark import get_spark

    base = None
    if args.dataset:
        from tokenrec.data.datasets import preset

        base = preset(args.dataset)
    cfg = load_config(args.config, args.overrides, base=base)
    from pyspark.sql import SparkSession

    had_session = SparkSession.getActiveSession() is not None
    spark = get_spark(cfg.spark)
    try:
        register_lake_views(spark, schema.Lake.at(cfg.paths.lake))
        df = run_query(spark, query.name, args.ds, _key_values(args.params))
        if args.limit is not None:
            df = df.limit(args.limit)
        rows = [tuple(row) for row in df.collect()]
        return format_rows(df.columns, rows, args.format)
    finally:
        if not had_session:
            spark.stop()

"""Finding and running the SQL files of ``sql/`` (dbt-style models) on Spark with named parameters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def sql_root() -> Path:
    """``$TOKENREC_SQL_DIR`` or the ``sql/`` folder at the top of the checkout (or image)."""
    env = os.environ.get("TOKENREC_SQL_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "sql"
    if not root.is_dir():
        raise FileNotFoundError(f"SQL folder {root} not found; set TOKENREC_SQL_DIR to the project's sql/ folder")
    return root


def read_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` may include a subfolder, e.g. ``etl/stg_events``)."""
    return (sql_root() / f"{name}.sql").read_text()


def run_sql(spark: SparkSession, name: str, view: str | None = None, **params: Any) -> DataFrame:
    """Run ``sql/<name>.sql`` with ``:param`` values; register the result as temp view ``view`` if given."""
    df = spark.sql(read_sql(name), args=params or None)
    if view:
        df.createOrReplaceTempView(view)
    return df

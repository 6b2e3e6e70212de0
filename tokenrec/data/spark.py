"""One place that builds the Spark session, from :class:`tokenrec.config.SparkConfig`.

Local mode by default; on a cluster the master URL and resources come from configuration (or from
spark-submit, whose settings win because ``getOrCreate`` reuses the session it started).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from tokenrec.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the active session or build one with UTC time, microsecond Parquet timestamps and no UI."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers use this environment's packages
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Never Spark's default static overwrite: we publish by stage-and-swap, and this guards any other write.
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark

"""One place that builds the Spark session, from :class:`tokenrec.config.SparkConfig`.

Local mode by default; on a cluster the master URL and resources come from configuration (or from
spark-submit, whose settings win because ``getOrCreate`` reuses the session it started).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
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

    java_options = cfg.conf.get("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
    sharing, writing = _class_data_sharing(cfg)
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", f"{java_options} {sharing}".strip())
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Never Spark's default static overwrite: we publish by stage-and-swap, and this guards any other write.
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in cfg.conf.items():
        if key != "spark.driver.extraJavaOptions":  # set above, with the class-data-sharing options
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if writing is not None:
        atexit.register(_publish_archive, spark, *writing)
    return spark


def _class_data_sharing(cfg: SparkConfig) -> tuple[str, tuple[Path, Path] | None]:
    """JVM options for class data sharing (JDK 17 AppCDS), and (temporary file, archive) when this JVM writes it.

    The archive is keyed by the pyspark version, its jars and the java found, so an upgrade writes a new one; a
    JVM that cannot use an archive (another JDK, a changed class path) ignores it and starts as usual.
    """
    import pyspark
    from pyspark import SparkContext

    ours = SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ  # not spark-submit's JVM
    if not (cfg.class_data_sharing and cfg.master.startswith("local") and ours):
        return "", None

    jars = Path(pyspark.__file__).parent / "jars"
    java = os.environ.get("JAVA_HOME") or shutil.which("java") or ""
    key = f"{pyspark.__version__}|{jars.stat().st_mtime_ns if jars.is_dir() else 0}|{java}"
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenrec" / "jvm"
        archive = folder / f"spark-{pyspark.__version__}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsa"
        quiet = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # the dump lists every class it skips
        if archive.is_file():
            return f"-XX:SharedArchiveFile={archive} {quiet}", None
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError, KeyError):  # no home directory or no writable cache: start without
        return "", None
    for stale in folder.glob("*.jsa.*.tmp"):  # left by a job that was killed while writing
        with contextlib.suppress(OSError):  # another job may be removing it too
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    temporary = folder / f"{archive.name}.{os.getpid()}.tmp"
    return f"-XX:ArchiveClassesAtExit={temporary} {quiet}", (temporary, archive)


def _publish_archive(spark: SparkSession, temporary: Path, archive: Path) -> None:
    """At exit: stop the JVM (it writes the archive as it exits), then move the archive into place atomically."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    try:
        spark.stop()
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()  # the gateway JVM exits when its stdin closes
            proc.wait(timeout=120)
        if temporary.is_file() and temporary.stat().st_size > 0:
            os.replace(temporary, archive)
    except Exception as exc:  # a missing cache only costs start-up time
        logging.getLogger(__name__).warning("JVM class archive not written (%s); the next job starts without", exc)
    finally:
        temporary.unlink(missing_ok=True)

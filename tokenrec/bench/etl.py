"""ETL + validation wall time per data set with Spark local[2]: ``python -m tokenrec.bench.etl [datasets...]``.

Each data set runs in a fresh lake; the Spark session is started once and its start-up time reported apart.
"""

from __future__ import annotations

import sys
import tempfile
import time

from tokenrec.bench.machine import write_result
from tokenrec.config import load_config
from tokenrec.data.datasets import preset
from tokenrec.data.etl import run_etl
from tokenrec.data.spark import get_spark
from tokenrec.gates.expectations import validate_interactions

DS = "2026-11-27"


def main(datasets: list[str]) -> None:
    results: dict[str, dict[str, float | int]] = {}
    started = time.perf_counter()
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    results["spark_startup_s"] = round(time.perf_counter() - started, 1)
    for name in datasets:
        with tempfile.TemporaryDirectory() as home:
            cfg = load_config(overrides=[f"paths.home={home}", "spark.master=local[2]"], base=preset(name))
            t0 = time.perf_counter()
            manifest = run_etl(spark, cfg, DS, publish=True).manifest
            t1 = time.perf_counter()
            validate_interactions(spark, cfg, DS)
            t2 = time.perf_counter()
        results[name] = {
            "raw_rows": manifest["raw_rows"],
            "rows": manifest["rows"],
            "users": manifest["users"],
            "items": manifest["items"],
            "etl_s": round(t1 - t0, 1),
            "validate_s": round(t2 - t1, 1),
        }
    write_result("speed-etl", results, command=f"make bench-etl  (python -m tokenrec.bench.etl {' '.join(datasets)})")


if __name__ == "__main__":
    main(sys.argv[1:] or ["ml100k", "beauty"])

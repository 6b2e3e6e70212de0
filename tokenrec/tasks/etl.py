"""Pipeline task ``etl``: the raw event log of ``ds`` -> a staged interactions snapshot, quarantine, ID maps.

Checks that the source has files for the date before Spark starts, then runs :func:`tokenrec.data.etl.run_etl`:
the snapshot ``interactions/snapshot_date=<ds>`` is staged, not yet visible, until ``validate_interactions``
passes and publishes it; the quarantine and the grown ID maps are published at once.
"""

from __future__ import annotations

from typing import Any

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.etl import run_etl
from tokenrec.data.loaders import list_source_files
from tokenrec.data.spark import get_spark


def run(cfg: Config, ds: str) -> dict[str, Any]:
    """Run the ETL of ``ds``.

    Args:
        cfg: the resolved configuration (``source``, ``etl``, ``spark``, ``paths.lake``).
        ds: the logical date: events up to its end go into ``interactions/snapshot_date=ds``.

    Returns:
        The staged snapshot, the next command to run, the quarantine folder and the row, user and item counts.

    Raises:
        InputError: the source has no files for ``ds``, or none can be read.
    """
    list_source_files(cfg.source.path, schema.parse_ds(ds))  # fail fast, before Spark starts
    result = run_etl(get_spark(cfg.spark), cfg, ds)
    m = result.manifest
    return {
        "staged": str(result.snapshot), "next": f"tokenrec validate-interactions --ds {ds} (checks and publishes it)",
        "quarantine": str(result.quarantine), "rows": m["rows"],
        "users": m["users"], "items": m["items"], "raw_rows": m["raw_rows"], "quarantined_rows": m["quarantined_rows"],
    }  # fmt: skip

"""Pipeline task ``validate_interactions``: the Great Expectations gate on the staged interactions of ``ds``.

Runs :func:`tokenrec.gates.expectations.validate_interactions` on Spark: when every expectation passes, the
snapshot the ETL staged is published atomically; otherwise it stays staged and unpublished, and the error
names the table, the failed expectations and sample rows.
"""

from __future__ import annotations

from typing import Any

from tokenrec.config import Config
from tokenrec.data.spark import get_spark
from tokenrec.gates.expectations import validate_interactions


def run(cfg: Config, ds: str) -> dict[str, Any]:
    """Validate, and if it passes publish, the interactions snapshot of ``ds``; return the gate's summary.

    Raises:
        InputError: nothing is staged or published for ``ds``.
        DataValidationError: an expectation failed (nothing is published).
    """
    return validate_interactions(get_spark(cfg.spark), cfg, ds)

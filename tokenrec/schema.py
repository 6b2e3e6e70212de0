"""The data contract: column names, Arrow schemas and paths of every table in the lake.

Every job, check and test imports names from here; nothing else spells a column name or a lake path.
Spark schemas are given as DDL strings so that this module imports neither pyspark nor torch.

Lake layout (root = ``paths.lake``)::

    raw/                                      source files as landed (outside the pipeline)
    interactions/snapshot_date=YYYY-MM-DD/    user_idx, item_idx, event_ts, split     (ETL)
    quarantine/snapshot_date=YYYY-MM-DD/      source_file, line_no, raw, reason       (ETL)
    id_maps/users/, id_maps/items/            raw_id, idx, first_seen (append-only)  (ETL)
    recommendations/dt=YYYY-MM-DD/            see RECOMMENDATIONS                     (nightly inference)

A published partition (``interactions/snapshot_date=D``) is a pointer to an immutable version folder under
``<table>/_versions/`` (see :mod:`tokenrec.storage`); readers see a complete version or the previous one.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tokenrec.errors import ConfigError, LakePathError

# ----------------------------------------------------------------------------------------- column names
USER_ID = "user_id"  # raw user id (string) as in the source
ITEM_ID = "item_id"  # raw item id (string) as in the source
USER_IDX = "user_idx"  # dense, stable int32 index from id_maps/users
ITEM_IDX = "item_idx"  # dense, stable int32 index from id_maps/items
EVENT_TS = "event_ts"
RATING = "rating"
SPLIT = "split"
RAW_ID = "raw_id"
IDX = "idx"
FIRST_SEEN = "first_seen"
SOURCE_FILE = "source_file"
LINE_NO = "line_no"
RAW = "raw"
REASON = "reason"
RANK = "rank"
SCORE = "score"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
GENERATED_AT = "generated_at"

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = "train", "valid", "test"
SPLITS = (SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST)

UTC_TS = pa.timestamp("us", tz="UTC")

# ------------------------------------------------------------------------------------------ Arrow schemas
EVENTS = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(EVENT_TS, UTC_TS, nullable=False),
        pa.field(RATING, pa.float64(), nullable=True),
    ]
)
"""What every raw-format loader produces (before cleaning); not stored in the lake."""

INTERACTIONS = pa.schema(
    [
        pa.field(USER_IDX, pa.int32(), nullable=False),
        pa.field(ITEM_IDX, pa.int32(), nullable=False),
        pa.field(EVENT_TS, UTC_TS, nullable=False),
        pa.field(SPLIT, pa.string(), nullable=False),
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field(SOURCE_FILE, pa.string()),
        pa.field(LINE_NO, pa.int64()),
        pa.field(RAW, pa.string()),
        pa.field(REASON, pa.string(), nullable=False),
    ]
)

ID_MAP = pa.schema(
    [
        pa.field(RAW_ID, pa.string(), nullable=False),
        pa.field(IDX, pa.int32(), nullable=False),
        pa.field(FIRST_SEEN, pa.date32(), nullable=False),
    ]
)

RECOMMENDATIONS = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(RANK, pa.int16(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(SCORE, pa.float32(), nullable=False),
        pa.field(MODEL_NAME, pa.string(), nullable=False),
        pa.field(MODEL_VERSION, pa.string(), nullable=False),
        pa.field(GENERATED_AT, UTC_TS, nullable=False),
    ]
)

# Spark DDL for the tables Spark writes (kept next to the Arrow schema they must equal).
INTERACTIONS_DDL = f"{USER_IDX} INT, {ITEM_IDX} INT, {EVENT_TS} TIMESTAMP, {SPLIT} STRING"
QUARANTINE_DDL = f"{SOURCE_FILE} STRING, {LINE_NO} BIGINT, {RAW} STRING, {REASON} STRING"

# ------------------------------------------------------------------------------------------------ paths
INTERACTIONS_TABLE = "interactions"
QUARANTINE_TABLE = "quarantine"
RECOMMENDATIONS_TABLE = "recommendations"
ID_MAPS = "id_maps"
USERS, ITEMS = "users", "items"
SNAPSHOT_KEY = "snapshot_date"
DT_KEY = "dt"
MANIFEST_FILE = "_manifest.json"
VALIDATION_FILE = "_validation.json"  # in a staged recommendations version: the gate's pass and file SHA-256s


def parse_ds(ds: str) -> dt.date:
    """Parse a logical date ``YYYY-MM-DD``; anything else is a :class:`ConfigError` saying what to pass."""
    try:
        parsed = dt.date.fromisoformat(ds)
    except (TypeError, ValueError):
        raise ConfigError(f"--ds must be a date as YYYY-MM-DD (e.g. 2026-11-27), got {ds!r}") from None
    if parsed.isoformat() != ds:
        raise ConfigError(f"--ds must be a date as YYYY-MM-DD (e.g. 2026-11-27), got {ds!r}")
    return parsed


@dataclass(frozen=True)
class Lake:
    """Paths of every table under one lake root. Refuses any path that escapes the root."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Lake:
        return cls(Path(root).expanduser().resolve())

    def _inside(self, *parts: str) -> Path:
        # Normalise without following links: a published partition is itself a link to its version folder.
        path = Path(os.path.normpath(self.root.joinpath(*parts)))
        if path != self.root and self.root not in path.parents:
            raise LakePathError(
                f"path {'/'.join(parts)!r} escapes the lake root {self.root}; "
                "use a table name and a YYYY-MM-DD date, not '..' or an absolute path"
            )
        return path

    def table(self, name: str) -> Path:
        return self._inside(name)

    def partition(self, table: str, key: str, value: str) -> Path:
        return self._inside(table, f"{key}={value}")

    def interactions(self, ds: str) -> Path:
        return self.partition(INTERACTIONS_TABLE, SNAPSHOT_KEY, parse_ds(ds).isoformat())

    def quarantine(self, ds: str) -> Path:
        return self.partition(QUARANTINE_TABLE, SNAPSHOT_KEY, parse_ds(ds).isoformat())

    def recommendations(self, dt_: str) -> Path:
        return self.partition(RECOMMENDATIONS_TABLE, DT_KEY, parse_ds(dt_).isoformat())

    def id_map(self, kind: str) -> Path:
        if kind not in (USERS, ITEMS):
            raise ValueError(f"id map kind must be {USERS!r} or {ITEMS!r}, got {kind!r}")
        return self._inside(ID_MAPS, kind)

    def validation_report(self, table: str, ds: str) -> Path:
        """Where the GX result of ``table``'s partition for ``ds`` is written (beside, not inside, the data)."""
        return self._inside("_validation", table, f"{parse_ds(ds).isoformat()}")

    def raw(self, *parts: str) -> Path:
        return self._inside("raw", *parts)

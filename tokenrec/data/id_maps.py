"""Stable, append-only ID maps: raw id (string) -> dense int32 index, one map for users and one for items.

An existing raw id keeps its index forever; new ids get the next indices. The map is a folder of Parquet files
(``id_maps/users/part-<ds>-<first idx>.parquet``), each holding the ids first seen by one ETL run; a file is
written atomically (:func:`tokenrec.storage.atomic_open`) and never modified, so a reader sees the map before or after
an addition. The driver reads and writes them with pyarrow: maps are small next to the event log. Writers
(the ETL) hold :func:`id_map_lock` while they read and extend the maps, so two ETLs never hand out the same
index.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.errors import DataValidationError
from tokenrec.storage import atomic_open, exclusive_lock

LOCK_FILE = ".lock"


def read_id_map(folder: Path) -> pa.Table:
    """The whole map (raw_id, idx, first_seen) sorted by idx; an empty table when the folder does not exist."""
    files = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not files:
        return schema.ID_MAP.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=schema.ID_MAP) for f in files]).sort_by(schema.IDX)
    _check_map(table, folder)
    return table


def append_ids(folder: Path, new_ids: pa.Table, ds: str) -> Path | None:
    """Append ``new_ids`` (raw_id, idx, first_seen) as one new immutable file; None when there is nothing new."""
    if new_ids.num_rows == 0:
        return None
    new_ids = new_ids.cast(schema.ID_MAP).sort_by(schema.IDX)
    first = new_ids.column(schema.IDX)[0].as_py()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{ds}-{first:010d}.parquet"
    with atomic_open(final) as fh:
        pq.write_table(new_ids, fh)
    return final


def _check_map(table: pa.Table, folder: Path) -> None:
    """An ID map must be a bijection onto 0..n-1; anything else means the folder was edited by hand."""
    idx = table.column(schema.IDX).to_numpy()
    n_raw = len(set(table.column(schema.RAW_ID).to_pylist()))
    if n_raw != table.num_rows or not (idx == range(table.num_rows)).all():
        raise DataValidationError(
            f"ID map {folder} is corrupt: {table.num_rows} rows, {n_raw} distinct raw ids, indices "
            f"{idx.min()}..{idx.max()} (expected 0..{table.num_rows - 1} without gaps or repeats). "
            "Restore the folder from backup; never edit or delete ID map files."
        )


def id_map_lock(maps_root: Path, timeout_s: float, holder: str):
    """The exclusive lock on ``<lake>/id_maps/.lock`` an ETL holds while it reads and extends both maps."""
    return exclusive_lock(maps_root / LOCK_FILE, timeout_s, holder)

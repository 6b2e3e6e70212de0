"""The raw ids a registered model serves under: the lake's ID maps, checked against the model's own.

A model knows users and items by index; the lake's ID maps (append-only) say which raw id an index means now.
Serving (``batch_inference``) and scoring the champion (``evaluate``) both need the current raw ids and the
guarantee that every index the model was trained on still means the same entity.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenrec import schema
from tokenrec.data.id_maps import read_id_map
from tokenrec.errors import InputError


def current_ids(lake: schema.Lake, kind: str, count: int, known: np.ndarray) -> pa.Array:
    """Raw ids by index of the first ``count`` entries of the lake's ID map; the model's must be a prefix.

    Returns a string array (no Python object per id, so a million users cost only their bytes).

    Raises:
        InputError: the map is shorter than the snapshot says, or an index the model knows has another raw id
            (the map was rebuilt, so the model's indices mean other entities now).
    """
    table = read_id_map(lake.id_map(kind))
    if table.num_rows < count:
        raise InputError(lake.id_map(kind), f"{table.num_rows} ids but the snapshot has {count} {kind}",
                         "Rerun the ETL for this date.")  # fmt: skip
    ids = table.column(schema.RAW_ID).slice(0, count).combine_chunks().cast(pa.string())
    if len(known) > count:
        raise InputError(lake.id_map(kind), f"the snapshot has {count} {kind}, the model knows {len(known)}",
                         "Use a snapshot at least as recent as the model's training snapshot.")  # fmt: skip
    same = pc.equal(ids.slice(0, len(known)), pa.array(known, pa.string()))
    differ = np.flatnonzero(~same.to_numpy(zero_copy_only=False))
    if len(differ):
        first = int(differ[0])
        raise InputError(
            lake.id_map(kind),
            f"{len(differ)} of the {len(known)} {kind} the model knows have another raw id now "
            f"(index {first}: {ids[first].as_py()!r}, the model's {known[first]!r})",
            "ID maps must only grow; restore the map, or retrain and register a model on the current map.",
        )
    return ids

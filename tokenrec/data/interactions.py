"""In-memory view of one interactions snapshot, the input of every model.

The ETL writes ``interactions/snapshot_date=D/`` (columns of :data:`tokenrec.schema.INTERACTIONS`) with a
manifest holding the ID map sizes. :class:`InteractionData` reads it into numpy arrays sorted by user, then
time (ties broken by item index, the order the ETL wrote), which is what the trainers and the evaluation need:
training pairs, each user's training sequence in time order, and one validation and one test item per user
(leave-one-out) or several (global time split).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.errors import InputError
from tokenrec.storage import read_manifest


@dataclass(frozen=True)
class InteractionData:
    """Interactions of one snapshot as arrays. Indices are the stable ``user_idx`` / ``item_idx``.

    Attributes:
        n_users: size of the user ID map (indices are ``0 .. n_users - 1``; some may have no interactions).
        n_items: size of the item ID map.
        users, items, timestamps, splits: one entry per interaction, sorted by (user, time, item);
            timestamps are int64 microseconds since the epoch, splits are 0 = train, 1 = valid, 2 = test.
    """

    n_users: int
    n_items: int
    users: np.ndarray  # (N,) int64
    items: np.ndarray  # (N,) int64
    timestamps: np.ndarray  # (N,) int64 microseconds
    splits: np.ndarray  # (N,) int8
    name: str = ""

    TRAIN, VALID, TEST = 0, 1, 2

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        splits: np.ndarray,
        n_users: int | None = None,
        n_items: int | None = None,
        name: str = "",
    ) -> InteractionData:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        splits = np.asarray(splits, dtype=np.int8)
        order = np.lexsort((items, timestamps, users))
        return cls(
            n_users=int(n_users if n_users is not None else (users.max() + 1 if len(users) else 0)),
            n_items=int(n_items if n_items is not None else (items.max() + 1 if len(items) else 0)),
            users=users[order],
            items=items[order],
            timestamps=timestamps[order],
            splits=splits[order],
            name=name,
        )

    @classmethod
    def from_table(cls, table: pa.Table, n_users: int, n_items: int, name: str = "") -> InteractionData:
        split_codes = {schema.SPLIT_TRAIN: cls.TRAIN, schema.SPLIT_VALID: cls.VALID, schema.SPLIT_TEST: cls.TEST}
        split_strings = table.column(schema.SPLIT).to_pylist()
        splits = np.fromiter((split_codes[s] for s in split_strings), dtype=np.int8, count=len(split_strings))
        ts = table.column(schema.EVENT_TS).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        return cls.from_arrays(
            users=table.column(schema.USER_IDX).to_numpy(),
            items=table.column(schema.ITEM_IDX).to_numpy(),
            timestamps=ts.to_numpy(),
            splits=splits,
            n_users=n_users,
            n_items=n_items,
            name=name,
        )

    @classmethod
    def load(cls, snapshot: str | Path) -> InteractionData:
        """Read a published snapshot folder (``.../interactions/snapshot_date=D``)."""
        snapshot = Path(snapshot)
        if not snapshot.exists():
            raise InputError(snapshot, "no interactions snapshot here", "run `tokenrec etl --ds D`, then `tokenrec validate-interactions --ds D` (it publishes the snapshot)")
        manifest = read_manifest(snapshot)
        table = pq.read_table(snapshot, schema=schema.INTERACTIONS)
        return cls.from_table(table, manifest["n_users"], manifest["n_items"], name=manifest.get("dataset", ""))

    # -------------------------------------------------------------------------------------------- views
    def _mask(self, split: int) -> np.ndarray:
        return self.splits == split

    def pairs(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split, in (user, time) order."""
        mask = self._mask(split)
        return self.users[mask], self.items[mask]

    @property
    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs(self.TRAIN)

    @cached_property
    def train_sequences(self) -> list[np.ndarray]:
        """Per user, the training items in time order (empty array for users without training data)."""
        users, items = self.train_pairs
        return _group(users, items, self.n_users)

    def sequences_before(self, split: int) -> list[np.ndarray]:
        """Per user, everything that precedes ``split`` in time: train for valid, train + valid for test."""
        keep = self.splits < split
        return _group(self.users[keep], self.items[keep], self.n_users)

    def targets(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation targets of ``split``: (users, items); a user may appear more than once (global split)."""
        return self.pairs(split)

    def item_popularity(self) -> np.ndarray:
        """(n_items,) number of training interactions per item."""
        _, items = self.train_pairs
        return np.bincount(items, minlength=self.n_items)

    def __len__(self) -> int:
        return len(self.users)

    def summary(self) -> dict[str, int]:
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "interactions": len(self),
            "train": int(self._mask(self.TRAIN).sum()),
            "valid": int(self._mask(self.VALID).sum()),
            "test": int(self._mask(self.TEST).sum()),
        }


def _group(users: np.ndarray, items: np.ndarray, n_users: int) -> list[np.ndarray]:
    """Split ``items`` (sorted by user) into one array per user index."""
    counts = np.bincount(users, minlength=n_users)
    return np.split(items, np.cumsum(counts)[:-1])

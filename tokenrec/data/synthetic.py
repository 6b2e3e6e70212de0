"""Synthetic power-law interaction logs for scale tests and benchmarks (1M users on one machine).

Real interaction logs are long-tailed on both sides: a few items take most of the interactions and a few users
are far more active than the rest. The generator reproduces both tails, deterministically by seed:

- user activity: ``min_per_user * (1 - U) ** (-1 / activity_alpha)`` distinct items (a Pareto tail with mean
  ``min_per_user * alpha / (alpha - 1)`` for ``alpha > 1``), capped at ``max_per_user``;
- item popularity: Zipf, ``p(rank r) ~ r ** -popularity_exponent``, the ranks shuffled over item indices once
  so that popularity is not the index order;
- timestamps: each user is active from a random start day to the end of the window, one event per equal slot
  (jittered inside it), so a user's events are strictly increasing in time.

Scope: generation in chunks of ``chunk_users`` users (chunk c draws from ``default_rng([seed, c])``, so a
chunk does not depend on the others, memory is bounded by one chunk, and a log of more users starts with the
users of a smaller one whose count is a multiple of ``chunk_users``), written as a raw event log that the
ETL's loaders read (``parquet`` or ``csv``: ``user_id``, ``item_id``, ``timestamp`` in epoch seconds), or
assembled in memory as an :class:`~tokenrec.data.interactions.InteractionData` with leave-one-out splits and
published as an interactions snapshot with stable ID maps (:func:`publish_snapshot`) for tests and benchmarks
that skip the Spark ETL (no k-core). Users are numbered ``0 .. n_users - 1`` (raw id ``u<n>``), items
``0 .. n_items - 1`` (raw id ``i<n>``); an item may end up without any interaction.

    python -m tokenrec.data.synthetic --users 1000000 --items 50000 --out events.parquet
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tokenrec import schema
from tokenrec.data.id_maps import append_ids, read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import ConfigError
from tokenrec.storage import atomic_open, publish_partition

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
USER_PREFIX, ITEM_PREFIX = "u", "i"
_PERMUTATION_STREAM = 2**31 - 1  # the rng stream of the popularity permutation; chunks use 0, 1, 2, ...


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Equal specs give identical logs; ``chunk_users`` is part of the spec because chunk c
    draws from its own random stream."""

    n_users: int
    n_items: int
    min_per_user: int = 5  # distinct items of the least active user (>= 5 survives a 5-core on users)
    activity_alpha: float = 2.0  # Pareto tail index of user activity (mean = min * alpha / (alpha - 1))
    max_per_user: int = 200  # cap on one user's distinct items (the heaviest users of the tail)
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity (0 = uniform)
    start: str = "2026-01-01"  # first day of the event window (UTC)
    days: int = 300  # length of the event window; every event lies before start + days
    seed: int = 0  # random seed
    chunk_users: int = 50_000  # users per generated chunk: bounds memory, and is part of the random layout

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 2:
            raise ConfigError(
                f"synthetic data needs >= 1 user and >= 2 items, got {self.n_users}, {self.n_items}"
            )
        if not 1 <= self.min_per_user <= self.max_per_user < self.n_items:
            raise ConfigError(
                "synthetic data needs 1 <= min_per_user <= max_per_user < n_items, got "
                f"{self.min_per_user}, {self.max_per_user}, {self.n_items}"
            )
        if self.activity_alpha <= 0 or self.popularity_exponent < 0 or self.days < 1 or self.chunk_users < 1:
            raise ConfigError(
                "synthetic data needs activity_alpha > 0, popularity_exponent >= 0, days >= 1 and "
                f"chunk_users >= 1, got {self.activity_alpha}, {self.popularity_exponent}, {self.days}, "
                f"{self.chunk_users}"
            )

    @property
    def start_seconds(self) -> int:
        day = dt.date.fromisoformat(self.start)
        return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())

    @property
    def end_seconds(self) -> int:
        """Every event is strictly before this (epoch seconds)."""
        return self.start_seconds + self.days * 86_400


@dataclass(frozen=True)
class EventChunk:
    """The events of consecutive users, sorted by (user, time); ``users``/``items`` are indices."""

    users: np.ndarray  # (E,) int64
    items: np.ndarray  # (E,) int64
    timestamps: np.ndarray  # (E,) int64 epoch seconds

    def table(self) -> pa.Table:
        """The raw event log rows: ``user_id`` ``u<n>``, ``item_id`` ``i<n>``, ``timestamp`` (seconds)."""
        return pa.table(
            {
                "user_id": _raw_ids(USER_PREFIX, self.users),
                "item_id": _raw_ids(ITEM_PREFIX, self.items),
                "timestamp": pa.array(self.timestamps, pa.int64()),
            }
        )


def popularity_cdf(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(cdf, item_of_rank)``: Zipf CDF ``(n_items,)`` over popularity ranks; the item at each rank."""
    weights = np.arange(1, spec.n_items + 1, dtype=np.float64) ** -spec.popularity_exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    item_of_rank = np.random.default_rng([spec.seed, _PERMUTATION_STREAM]).permutation(spec.n_items)
    return cdf, item_of_rank


def chunks(spec: SyntheticSpec, progress: bool = False) -> Iterator[EventChunk]:
    """The event log, ``spec.chunk_users`` users at a time, in user order."""
    cdf, item_of_rank = popularity_cdf(spec)
    starts = range(0, spec.n_users, spec.chunk_users)
    for number, first in enumerate(tqdm(starts, desc="synthetic users", unit="chunk", disable=not progress)):
        n = min(spec.chunk_users, spec.n_users - first)
        yield _chunk(spec, np.random.default_rng([spec.seed, number]), first, n, cdf, item_of_rank)


def _chunk(
    spec: SyntheticSpec,
    rng: np.random.Generator,
    first: int,
    n: int,
    cdf: np.ndarray,
    item_of_rank: np.ndarray,
) -> EventChunk:
    """Events of users ``first .. first + n - 1``."""
    uniform = rng.random(n)
    counts = np.floor(spec.min_per_user * (1.0 - uniform) ** (-1.0 / spec.activity_alpha))
    counts = np.minimum(counts, spec.max_per_user).astype(np.int64)  # (n,) distinct items per user
    local, items = _distinct_items(rng, counts, cdf, item_of_rank)  # sorted by local user, draw order

    # time: user u is active from a random day in the first half of the window to its end, one event per slot
    span = spec.end_seconds - spec.start_seconds
    begin = spec.start_seconds + rng.integers(0, span // 2, size=n)  # (n,)
    slot = (spec.end_seconds - begin) // counts  # (n,) >= 1: counts <= max_per_user << span
    position = np.arange(len(local)) - np.repeat(
        np.cumsum(counts) - counts, counts
    )  # (E,) k-th event of user
    jitter = rng.integers(0, np.repeat(slot, counts))
    timestamps = np.repeat(begin, counts) + position * np.repeat(slot, counts) + jitter
    return EventChunk(local + first, items, timestamps)


def _distinct_items(
    rng: np.random.Generator, counts: np.ndarray, cdf: np.ndarray, item_of_rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct Zipf-drawn items per local user u: ``(users, items)`` sorted by user.

    Draws with replacement, keeps each user's first occurrences, and draws again for users still short
    (popular items collide often); a few rounds suffice because ``counts < n_items``.
    """
    n_items = len(cdf)
    users = np.zeros(0, dtype=np.int64)
    items = np.zeros(0, dtype=np.int64)
    missing = counts.copy()
    while missing.any():
        short = np.flatnonzero(missing)
        draws = 2 * missing[short] + 4  # over-draw: most users finish in one round
        new_users = np.repeat(short, draws)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(len(new_users)), side="right"), n_items - 1)
        users = np.concatenate([users, new_users])
        items = np.concatenate([items, item_of_rank[ranks]])
        # first occurrence of each (user, item), then at most counts[u] per user, in draw order
        _, first = np.unique(users * n_items + items, return_index=True)
        first.sort()
        users, items = users[first], items[first]
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        rank_in_user = np.arange(len(users)) - np.repeat(
            np.searchsorted(users, np.arange(len(counts))), np.bincount(users, minlength=len(counts))
        )
        keep = rank_in_user < counts[users]
        users, items = users[keep], items[keep]
        missing = counts - np.bincount(users, minlength=len(counts))
    return users, items


def _raw_ids(prefix: str, indices: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(indices, pa.int64()), pa.string()), "")


def write_events(
    spec: SyntheticSpec, path: str | Path, fmt: str = "parquet", progress: bool = False
) -> dict[str, Any]:
    """Write the event log to one ``parquet`` (a row group per chunk) or ``csv`` file; return its counts.

    The file is what ``source.format: parquet`` / ``csv`` with the default ``source.*_col`` names and
    ``time_unit: s`` reads (see :func:`source_layer`).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"synthetic output format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    events = users = 0
    writer: Any = None
    with atomic_open(path) as fh, contextlib.ExitStack() as closing:  # a reader never sees a half-written log
        for chunk in chunks(spec, progress):
            table = chunk.table()
            if writer is None:
                writer = (
                    pq.ParquetWriter(fh, table.schema)
                    if fmt == "parquet"
                    else pcsv.CSVWriter(fh, table.schema)
                )
                closing.callback(writer.close)
            writer.write_table(table)
            events += table.num_rows
            users += len(np.unique(chunk.users))
    log.info("wrote %d events of %d users to %s", events, users, path)
    return {"path": str(path), "events": events, "users": users, "items": spec.n_items}


def source_layer(path: str | Path, fmt: str = "parquet", dataset: str = "synthetic") -> dict[str, Any]:
    """The config layer (``load_config(base=...)``) with which the ETL reads a :func:`write_events` log."""
    return {"source": {"dataset": dataset, "format": fmt, "path": str(path), "time_unit": "s"}}


def interaction_data(spec: SyntheticSpec, name: str = "synthetic", progress: bool = False) -> InteractionData:
    """The whole log as a snapshot in memory, without the ETL: indices = generated numbers, leave-one-out.

    Per user the last event is ``test`` and the one before ``valid`` when the user has >= 3 events (the
    ETL's leave-one-out rule); no k-core is applied. Memory: about 25 bytes per event.
    """
    parts = list(chunks(spec, progress))
    users = np.concatenate([c.users for c in parts])
    items = np.concatenate([c.items for c in parts])
    micros = np.concatenate([c.timestamps for c in parts]) * 1_000_000
    del parts
    counts = np.bincount(users, minlength=spec.n_users)
    from_end = np.repeat(np.cumsum(counts), counts) - 1 - np.arange(len(users))  # (E,) 0 = user's last event
    long_enough = np.repeat(counts >= 3, counts)
    splits = np.where(long_enough & (from_end == 0), InteractionData.TEST, InteractionData.TRAIN)
    splits = np.where(long_enough & (from_end == 1), InteractionData.VALID, splits).astype(np.int8)
    return InteractionData.from_arrays(users, items, micros, splits, spec.n_users, spec.n_items, name=name)


def publish_snapshot(lake: schema.Lake, ds: str, data: InteractionData) -> Path:
    """Publish ``data`` (generated numbers as indices) as the interactions snapshot of ``ds``, like the ETL.

    Raw ids ``u<n>`` / ``i<n>`` already in the lake's ID maps keep their index; the others are appended in
    ascending number, users and items with no interaction in ``data`` are not added. So a later, larger log
    of the same spec gets the earlier indices plus new ones, like a real nightly snapshot.

    Returns:
        The published snapshot partition.
    """
    user_idx = _stable_indices(lake, schema.USERS, USER_PREFIX, data.users, data.n_users, ds)
    item_idx = _stable_indices(lake, schema.ITEMS, ITEM_PREFIX, data.items, data.n_items, ds)
    splits = pa.array([schema.SPLIT_TRAIN, schema.SPLIT_VALID, schema.SPLIT_TEST], pa.string())
    table = pa.table(
        {
            schema.USER_IDX: pa.array(user_idx[data.users], pa.int32()),
            schema.ITEM_IDX: pa.array(item_idx[data.items], pa.int32()),
            schema.EVENT_TS: pa.array(data.timestamps, pa.int64()).cast(schema.UTC_TS),
            schema.SPLIT: splits.take(pa.array(data.splits, pa.int8())),
        },
        schema=schema.INTERACTIONS,
    )
    n_users = read_id_map(lake.id_map(schema.USERS)).num_rows
    n_items = read_id_map(lake.id_map(schema.ITEMS)).num_rows
    manifest = {
        "table": schema.INTERACTIONS_TABLE,
        "snapshot_date": ds,
        "rows": table.num_rows,
        "users": int(len(np.unique(data.users))),
        "items": int(len(np.unique(data.items))),
        "n_users": n_users,
        "n_items": n_items,
        "dataset": data.name,
        "source": "tokenrec.data.synthetic (Spark ETL skipped)",
    }

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-00000.parquet", row_group_size=1 << 20)

    return publish_partition(lake.interactions(ds), write, manifest)


def _stable_indices(
    lake: schema.Lake, kind: str, prefix: str, numbers: np.ndarray, count: int, ds: str
) -> np.ndarray:
    """``(count,)`` index by generated number (-1 where never seen), appending new numbers to the ID map."""
    existing = read_id_map(lake.id_map(kind))
    index = np.full(count, -1, dtype=np.int64)
    if existing.num_rows:
        known = pc.cast(pc.utf8_slice_codeunits(existing.column(schema.RAW_ID), len(prefix)), pa.int64())
        index[known.to_numpy()] = existing.column(schema.IDX).to_numpy()
    present = np.zeros(count, dtype=bool)
    present[numbers] = True
    new = np.flatnonzero(present & (index < 0))
    index[new] = existing.num_rows + np.arange(len(new))
    day = dt.date.fromisoformat(ds)
    append_ids(lake.id_map(kind), pa.table({
        schema.RAW_ID: _raw_ids(prefix, new),
        schema.IDX: pa.array(index[new], pa.int32()),
        schema.FIRST_SEEN: pa.array(np.full(len(new), np.datetime64(day, "D"))).cast(pa.date32()),
    }), ds)  # fmt: skip
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic power-law interaction log.")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--format", choices=FORMATS, default="parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-per-user", type=int, default=SyntheticSpec.min_per_user)
    parser.add_argument("--max-per-user", type=int, default=SyntheticSpec.max_per_user)
    parser.add_argument(
        "--alpha", type=float, default=SyntheticSpec.activity_alpha, help="user activity tail"
    )
    parser.add_argument(
        "--zipf", type=float, default=SyntheticSpec.popularity_exponent, help="item popularity"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = SyntheticSpec(args.users, args.items, args.min_per_user, args.alpha, args.max_per_user, args.zipf,
                         seed=args.seed)  # fmt: skip
    log.info("%s", write_events(spec, args.out, args.format, progress=True))


if __name__ == "__main__":
    main()

"""Synthetic interaction data with both collaborative and sequential structure, in memory or as a snapshot.

Users belong to clusters; each cluster owns a ring of items, and a user walks consecutive items of its ring
from a random start (with a little noise). Graph models can learn the clusters, sequential models the walk,
and neither structure is visible to most-popular.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenrec import schema
from tokenrec.data.interactions import InteractionData


def make_walks(
    n_users: int = 240,
    n_items: int = 120,
    clusters: int = 6,
    length: int = 14,
    noise: float = 0.1,
    seed: int = 0,
) -> InteractionData:
    """Leave-one-out data: last item test, second-to-last validation, the rest training."""
    rng = np.random.default_rng(seed)
    ring = n_items // clusters
    users, items, times, splits = [], [], [], []
    for user in range(n_users):
        cluster = user % clusters
        start = rng.integers(ring)
        seen: set[int] = set()
        walk = []
        step = 0
        while len(walk) < length:
            if rng.random() < noise:
                item = int(rng.integers(n_items))
            else:
                item = cluster * ring + (start + step) % ring
                step += 1
            if item not in seen:
                seen.add(item)
                walk.append(item)
        for t, item in enumerate(walk):
            users.append(user)
            items.append(item)
            times.append(1_700_000_000_000_000 + t * 1_000_000)
            splits.append(0 if t < length - 2 else (1 if t == length - 2 else 2))
    return InteractionData.from_arrays(
        np.array(users),
        np.array(items),
        np.array(times),
        np.array(splits),
        n_users,
        n_items,
        name="synthetic",
    )


def write_snapshot(data: InteractionData, folder: Path) -> Path:
    """Write ``data`` as an interactions snapshot (Parquet + manifest) that ``InteractionData.load`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {InteractionData.TRAIN: schema.SPLIT_TRAIN, InteractionData.VALID: schema.SPLIT_VALID}
    names[InteractionData.TEST] = schema.SPLIT_TEST
    table = pa.table(
        {
            schema.USER_IDX: pa.array(data.users, pa.int32()),
            schema.ITEM_IDX: pa.array(data.items, pa.int32()),
            schema.EVENT_TS: pa.array(data.timestamps, pa.int64()).cast(schema.UTC_TS),
            schema.SPLIT: pa.array([names[int(s)] for s in data.splits], pa.string()),
        },
        schema=schema.INTERACTIONS,
    )
    pq.write_table(table, folder / "part-00000.parquet")
    manifest = {"n_users": data.n_users, "n_items": data.n_items, "dataset": data.name}
    (folder / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="session")
def walks() -> InteractionData:
    return make_walks()


@pytest.fixture
def walks_snapshot(tmp_path: Path, walks: InteractionData) -> Path:
    return write_snapshot(walks, tmp_path / "interactions" / "snapshot_date=2026-01-01")


@pytest.fixture
def one_torch_thread():
    """Tiny models train faster on one intra-op thread; OpenMP spin-waits dominate on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

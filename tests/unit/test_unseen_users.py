"""The held-out-users benchmark's data handling: re-indexing, subsets and the snapshot it trains on."""

from pathlib import Path

import numpy as np

from tokenrec.bench.unseen_users import hold_out, subset, write_snapshot
from tokenrec.data.interactions import InteractionData


def _data() -> InteractionData:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 6)
    items = rng.integers(0, 40, size=len(users))
    timestamps = np.tile(np.arange(6), 30) * 1_000_000
    splits = np.tile([0, 0, 0, 0, 1, 2], 30)
    return InteractionData.from_arrays(users, items, timestamps, splits, 30, 40, name="toy")


def test_hold_out_moves_a_share_of_users_to_the_end_and_keeps_every_row() -> None:
    data = _data()
    full, n_seen = hold_out(data, 0.1, seed=3)
    assert (full.n_users, full.n_items, n_seen) == (30, 40, 27)
    assert len(full.users) == len(data.users)
    # every user keeps their own rows: the same (item, time) pairs per user, under the new index
    def pairs(d: InteractionData, u: int) -> tuple:
        return tuple(sorted(zip(d.items[d.users == u].tolist(), d.timestamps[d.users == u].tolist(), strict=True)))

    old = {u: pairs(data, u) for u in range(30)}
    new = {u: pairs(full, u) for u in range(30)}
    assert sorted(old.values()) == sorted(new.values())
    again, _ = hold_out(data, 0.1, seed=3)
    assert np.array_equal(again.users, full.users)  # seeded


def test_subset_and_snapshot_round_trip(tmp_path: Path) -> None:
    full, n_seen = hold_out(_data(), 0.2, seed=0)
    seen = subset(full, np.arange(full.n_users) < n_seen, n_seen)
    assert seen.n_users == n_seen and seen.users.max() == n_seen - 1
    folder = write_snapshot(seen, tmp_path / "snap", {"dataset": "toy", "n_items": 40})
    loaded = InteractionData.load(folder)
    assert (loaded.n_users, loaded.n_items, loaded.name) == (n_seen, 40, "toy")
    for name in ("users", "items", "timestamps", "splits"):
        assert np.array_equal(getattr(loaded, name), getattr(seen, name))

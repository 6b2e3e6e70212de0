"""The held-out-users benchmark's data handling: re-indexing, subsets and the snapshot it trains on."""

import math
from pathlib import Path

import numpy as np
import pytest

from tokenrec.bench.unseen_users import folds, hold_out, hold_out_users, pool, subset, write_snapshot
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
        return tuple(
            sorted(zip(d.items[d.users == u].tolist(), d.timestamps[d.users == u].tolist(), strict=True))
        )

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


def test_folds_hold_every_user_out_exactly_once() -> None:
    parts = folds(30, 4, seed=1)
    assert len(parts) == 4 and sorted(len(p) for p in parts) == [7, 7, 8, 8]
    assert sorted(np.concatenate(parts).tolist()) == list(range(30))
    full, n_seen = hold_out_users(_data(), parts[2])
    assert n_seen == 30 - len(parts[2])
    data = _data()
    held_rows = np.isin(data.users, parts[2])
    assert (full.users >= n_seen).sum() == held_rows.sum()  # the held users' rows, all under the last indices
    assert sorted(full.items[full.users >= n_seen].tolist()) == sorted(data.items[held_rows].tolist())


def _fold(hr: float, n_unseen: int) -> dict:
    row = {"valid": {"HR@20": hr, "NDCG@20": hr / 2}, "test": {"HR@20": hr, "NDCG@20": hr / 2}}
    return {
        "dataset": "toy",
        "users": {"seen": 100 - n_unseen, "unseen": n_unseen},
        "targets": {
            "seen": {"valid": 100 - n_unseen, "test": 100 - n_unseen},
            "unseen": {"valid": n_unseen, "test": n_unseen},
        },  # fmt: skip
        "tokenrec": {"seen": row, "unseen": row},
        "fold_in": {"new_users": n_unseen},
    }


def test_pooled_metrics_weigh_each_fold_by_its_targets_with_a_binomial_error() -> None:
    pooled = pool([_fold(0.1, 25), _fold(0.2, 75)])
    assert pooled["users"] == {"seen": 100, "unseen": 100}
    assert pooled["tokenrec"]["unseen"]["test"]["HR@20"] == pytest.approx((0.1 * 25 + 0.2 * 75) / 100)
    assert pooled["tokenrec"]["seen"]["valid"]["NDCG@20"] == pytest.approx((0.05 * 75 + 0.1 * 25) / 100)
    p = 0.175
    assert pooled["standard_error_hr20"]["tokenrec"]["unseen"]["test"] == pytest.approx(
        math.sqrt(p * (1 - p) / 100)
    )
    assert "fold_in" not in pooled


def test_the_pooled_file_renders_one_line_per_model_and_group_with_its_error(tmp_path, monkeypatch) -> None:
    import json

    from tokenrec.bench import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    results = {**pool([_fold(0.1, 25), _fold(0.2, 75)]), "protocol": {"held_out": "2 folds"}}
    doc = {"command": "python -m tokenrec.bench.unseen_users --folds 2", "commit": "abc1234",
           "date": "2026-12-07 22:00 UTC", "machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None},
           "results": results}  # fmt: skip
    (tmp_path / "unseen-users-toy.json").write_text(json.dumps(doc))
    section = report.render().split("### Seen vs unseen users: toy")[1]
    assert "| tokenrec | unseen | 0.1750 | 0.0875 | 0.1750 | 0.0875 | 0.0380 |" in section
    assert "| targets |" not in section and "| standard_error_hr20 |" not in section

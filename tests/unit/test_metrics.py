"""HR@K / NDCG@K against hand-computed values, limit cases and a brute-force sort (tokenrec.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenrec.evaluation import metrics

pytestmark = pytest.mark.unit


def brute_force_ranking(row: np.ndarray, excluded: set[int]) -> list[int]:
    """Items by (-score, index): the specification of the deterministic order, written the obvious way."""
    return sorted((j for j in range(len(row)) if j not in excluded), key=lambda j: (-row[j], j))


def test_rank_and_metrics_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    ranks = metrics.ranks_from_scores(scores, torch.tensor([2]))
    assert ranks.tolist() == [3.0]  # order 3, 1, 2, 0
    got = metrics.metrics_from_ranks(ranks, [1, 2, 3])
    assert got["HR@1"] == 0.0 and got["HR@2"] == 0.0 and got["HR@3"] == 1.0
    assert got["NDCG@2"] == 0.0
    assert got["NDCG@3"] == pytest.approx(1 / math.log2(4))  # 0.5


def test_exclusion_moves_target_up() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    ranks = metrics.ranks_from_scores(scores, torch.tensor([2]), torch.tensor([0]), torch.tensor([3]))
    assert ranks.tolist() == [2.0]
    assert metrics.metrics_from_ranks(ranks, [2])["NDCG@2"] == pytest.approx(1 / math.log2(3))


def test_repeated_exclusion_pairs_count_once() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    ranks = metrics.ranks_from_scores(
        scores, torch.tensor([2]), torch.tensor([0, 0, 0]), torch.tensor([3, 3, 1])
    )
    assert ranks.tolist() == [1.0]


def test_ties_go_to_the_lower_item_index() -> None:
    scores = torch.ones(4, 5)
    ranks = metrics.ranks_from_scores(scores, torch.tensor([0, 2, 4, 3]))
    assert ranks.tolist() == [1.0, 3.0, 5.0, 4.0]
    # an excluded tied item with a lower index no longer counts
    ranks = metrics.ranks_from_scores(scores[:1], torch.tensor([2]), torch.tensor([0]), torch.tensor([1]))
    assert ranks.tolist() == [2.0]


def test_perfect_ranking_gives_one() -> None:
    scores = torch.eye(6) * 10  # each user's target is its own best item
    got = metrics.evaluate_scores(scores, torch.arange(6), [1, 10])
    assert got == {"HR@1": 1.0, "NDCG@1": 1.0, "HR@10": 1.0, "NDCG@10": 1.0}


def test_excluded_target_and_target_beyond_k_are_misses() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = torch.tensor([0, 4])  # row 0: target excluded; row 1: target ranked 5th
    ranks = metrics.ranks_from_scores(scores, targets, torch.tensor([0]), torch.tensor([0]))
    assert math.isinf(ranks[0]) and ranks[1] == 5.0
    got = metrics.metrics_from_ranks(ranks, [3, 5])
    assert got["HR@3"] == 0.0 and got["NDCG@3"] == 0.0
    assert got["HR@5"] == 0.5
    assert got["NDCG@5"] == pytest.approx(0.5 / math.log2(6))


def test_ndcg_of_rank_r_is_inverse_log() -> None:
    for r in range(1, 31):
        assert metrics.metrics_from_ranks(torch.tensor([float(r)]), [30])["NDCG@30"] == pytest.approx(
            1 / math.log2(r + 1)
        )


def test_mean_over_rows_by_hand() -> None:
    ranks = torch.tensor([1.0, 2.0, 11.0, math.inf])
    got = metrics.metrics_from_ranks(ranks, [10, 20])
    assert got["HR@10"] == pytest.approx(2 / 4)
    assert got["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert got["HR@20"] == pytest.approx(3 / 4)
    assert got["NDCG@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)


def test_score_ranks_match_a_brute_force_sort_with_ties_and_exclusion() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 30)).astype(np.float32)  # many ties
    targets = rng.integers(0, 30, size=40)
    rows = np.repeat(np.arange(40), 4)
    items = rng.integers(0, 30, size=160)
    ranks = metrics.ranks_from_scores(
        torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(rows), torch.from_numpy(items)
    )
    for u in range(40):
        excluded = set(items[rows == u].tolist())
        order = brute_force_ranking(scores[u], excluded)
        expected = order.index(targets[u]) + 1 if targets[u] not in excluded else math.inf
        assert ranks[u] == expected


def test_deterministic_topk_matches_a_brute_force_sort() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(50, 25)).astype(np.float32)
    got = metrics.deterministic_topk(torch.from_numpy(scores), 7)
    for u in range(50):
        assert got[u].tolist() == brute_force_ranking(scores[u], set())[:7]


def test_topk_lists_and_score_matrix_agree() -> None:
    rng = np.random.default_rng(2)
    scores = torch.from_numpy(rng.integers(0, 8, size=(64, 40)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 40, size=64))
    rows = torch.arange(64).repeat_interleave(3)
    items = torch.from_numpy(rng.integers(0, 40, size=192))
    lists = metrics.deterministic_topk(metrics.mask_excluded(scores.clone(), rows, items), 30)
    assert metrics.evaluate_topk(lists, targets, [10, 20, 30]) == pytest.approx(
        metrics.evaluate_scores(scores, targets, [10, 20, 30], rows, items)
    )


def test_topk_positions_by_hand() -> None:
    lists = np.array([[4, 2, 9], [1, 0, 3], [7, 8, 6]])
    ranks = metrics.ranks_from_topk(lists, np.array([9, 1, 5]))
    assert ranks[0] == 3 and ranks[1] == 1 and math.isinf(ranks[2])
    got = metrics.evaluate_topk(lists, np.array([9, 1, 5]), [3])
    assert got["HR@3"] == pytest.approx(2 / 3)
    assert got["NDCG@3"] == pytest.approx((0.5 + 1.0) / 3)


def test_topk_lists_shorter_than_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="K=20"):
        metrics.evaluate_topk(np.zeros((2, 10), dtype=np.int64), np.zeros(2, dtype=np.int64), [10, 20])

"""Top-K ranking metrics: HR@K and NDCG@K under full ranking with seen items excluded (PAPER.md section 5).

Every user has one held-out target per row (a user with several targets, as in the global time split, simply
has several rows). A target's *rank* is its 1-based position in the user's ranking of all items that are not
excluded; ties are broken deterministically, higher score first, then lower item index. A target that is
itself excluded, or that falls outside a top-K list, counts as a miss (rank ``inf``).

With one relevant item per row:
    HR@K   = 1[rank <= K]
    NDCG@K = 1[rank <= K] / log2(rank + 1)      (the ideal DCG is 1)
and the reported value is the mean over rows.

Two entry points share :func:`metrics_from_ranks`: :func:`ranks_from_scores` for a dense ``(U, n_items)``
score matrix (baselines, LightGCN) and :func:`ranks_from_topk` for precomputed top-K lists (faiss retrieval).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MISS = float("inf")


def mask_excluded(scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Set ``scores[rows[j], items[j]] = -inf`` in place and return ``scores``.

    Args:
        scores: (U, n_items) float scores.
        rows: (E,) row index of each excluded (row, item) pair.
        items: (E,) item index of each excluded pair.
    """
    if rows.numel():
        scores[rows.to(scores.device), items.to(scores.device)] = -torch.inf
    return scores


def ranks_from_scores(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude_rows: torch.Tensor | None = None,
    exclude_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact 1-based rank of each row's target among the non-excluded items, ties by lower item index.

    Counting beats sorting: ``rank = 1 + #{j: s_j > s_t or (s_j == s_t and j < t)}``, which is what a stable
    descending sort gives, in O(n_items) per row. Excluded items that would precede the target are then
    subtracted, so the score matrix is neither copied nor modified.

    Args:
        scores: (U, n_items) scores; higher is better.
        targets: (U,) target item index per row.
        exclude_rows, exclude_items: (E,) pairs (row, item) removed from the ranking (seen items);
            repeated pairs count once.

    Returns:
        (U,) float64 ranks on the CPU; ``inf`` where the target itself is excluded.
    """
    n_rows, n_items = scores.shape
    device = scores.device
    targets = targets.to(device).long()
    target_scores = scores.gather(1, targets[:, None])  # (U, 1)
    ahead = (scores > target_scores).sum(dim=1)  # (U,)
    ties = scores == target_scores  # (U, n_items), the target itself included
    tied_rows = (ties.sum(dim=1) > 1).nonzero().flatten()
    if tied_rows.numel():
        lower = torch.arange(n_items, device=device)[None, :] < targets[tied_rows, None]
        ahead[tied_rows] += (ties[tied_rows] & lower).sum(dim=1)
    excluded_target = torch.zeros(n_rows, dtype=torch.bool, device=device)
    if exclude_rows is not None and exclude_items is not None and exclude_rows.numel():
        keys = torch.unique(exclude_rows.to(device).long() * n_items + exclude_items.to(device).long())
        rows, items = keys // n_items, keys % n_items
        seen_scores = scores[rows, items]  # (E,)
        row_target, row_score = targets[rows], target_scores[rows, 0]
        precedes = (seen_scores > row_score) | ((seen_scores == row_score) & (items < row_target))
        ahead -= torch.bincount(rows[precedes], minlength=n_rows)
        excluded_target[rows[items == row_target]] = True
    ranks = (1 + ahead).double().cpu()
    ranks[excluded_target.cpu()] = MISS
    return ranks


def deterministic_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(U, k) item indices of the ``k`` best scores per row: higher score first, then lower item index.

    ``torch.topk`` is fast but leaves the order of equal scores unspecified; rows whose ``k``-th score is tied
    with an item outside the selection are redone with a stable sort, which is exact and rare.
    """
    k = min(k, scores.shape[1])
    values, indices = torch.topk(scores, k, dim=1)  # (U, k)
    # Order inside the selection: by (-score, index). Two stable sorts, secondary key first.
    by_index = indices.sort(dim=1, stable=True)
    values = values.gather(1, by_index.indices)
    indices = by_index.values
    by_score = values.sort(dim=1, descending=True, stable=True)
    indices = indices.gather(1, by_score.indices)
    values = by_score.values
    # Boundary ties: more items share the k-th score than were selected, so which ones is arbitrary.
    kth = values[:, -1:]  # (U, 1)
    tied_total = (scores == kth).sum(dim=1)
    tied_taken = (values == kth).sum(dim=1)
    redo = (tied_total > tied_taken).nonzero().flatten()
    if redo.numel():
        stable = scores[redo].sort(dim=1, descending=True, stable=True).indices[:, :k]
        indices[redo] = stable
    return indices


def ranks_from_topk(topk: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> torch.Tensor:
    """1-based position of each row's target in its top-K list (``inf`` when absent).

    Args:
        topk: (U, K) item indices, best first, seen items already removed (e.g. by the retriever).
        targets: (U,) target item index per row.

    Returns:
        (U,) float64 ranks on the CPU.
    """
    topk = torch.as_tensor(topk).cpu().long()
    targets = torch.as_tensor(targets).cpu().long()
    hits = topk == targets[:, None]  # (U, K)
    position = hits.float().argmax(dim=1)  # first hit; 0 when none, fixed below
    ranks = (position + 1).double()
    ranks[~hits.any(dim=1)] = MISS
    return ranks


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Mean HR@K and NDCG@K over rows, as ``{"HR@10": ..., "NDCG@10": ..., "HR@20": ...}``.

    Args:
        ranks: (U,) 1-based ranks, ``inf`` for a miss.
        ks: cut-offs, e.g. ``[10, 20, 30]``.
    """
    ranks = torch.as_tensor(ranks, dtype=torch.float64).cpu()
    out: dict[str, float] = {}
    if ranks.numel() == 0:
        raise ValueError("no evaluation rows: the split has no targets (check the snapshot's split column)")
    gains = 1.0 / torch.log2(ranks + 1.0)  # 0 for inf
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = float(hit.double().mean())
        out[f"NDCG@{k}"] = float(torch.where(hit, gains, 0.0).mean())
    return out


def evaluate_scores(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks: Sequence[int],
    exclude_rows: torch.Tensor | None = None,
    exclude_items: torch.Tensor | None = None,
) -> dict[str, float]:
    """HR@K / NDCG@K of a dense ``(U, n_items)`` score matrix with (row, item) exclusions."""
    return metrics_from_ranks(ranks_from_scores(scores, targets, exclude_rows, exclude_items), ks)


def evaluate_topk(
    topk: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, ks: Sequence[int]
) -> dict:
    """HR@K / NDCG@K of precomputed top-K lists; every ``k`` in ``ks`` must fit in the lists."""
    width = torch.as_tensor(topk).shape[1]
    if max(ks) > width:
        raise ValueError(f"top-K lists hold {width} items but metrics up to K={max(ks)} were asked for")
    return metrics_from_ranks(ranks_from_topk(topk, targets), ks)

"""Full-ranking evaluation of any recommender on the validation or test split (PAPER.md section 5).

A model is wrapped as a *ranker*: either it scores every item for a batch of users
(:class:`ScoreRanker`, e.g. LightGCN, MF, SASRec, most-popular), or it returns top-K lists itself
(:class:`TopKRanker`, e.g. TokenRec's faiss retrieval). Exclusion follows the protocol: when scoring the
validation split every training item of the user is removed from the ranking; for the test split, training and
validation items. Metrics are HR@K and NDCG@K from :mod:`tokenrec.evaluation.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation import metrics

log = logging.getLogger(__name__)

SPLIT_NAMES = {InteractionData.VALID: "valid", InteractionData.TEST: "test"}


@runtime_checkable
class ScoreRanker(Protocol):
    """Scores all items for a batch of users; higher is better."""

    def score(self, users: np.ndarray, split: int) -> torch.Tensor:
        """(B, n_items) scores for ``users`` when predicting ``split`` (history = everything before it)."""
        ...


@runtime_checkable
class TopKRanker(Protocol):
    """Returns each user's best ``k`` items with the given seen items already left out."""

    def topk(self, users: np.ndarray, split: int, k: int, seen: list[np.ndarray]) -> np.ndarray:
        """(B, k) item indices, best first; ``seen[b]`` are the items user ``users[b]`` must not get."""
        ...


class EmbeddingRanker:
    """Dot-product scores of user and item embedding tables (MF, LightGCN)."""

    def __init__(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        self.user_emb = user_emb.detach().float()  # (n_users, d)
        self.item_emb = item_emb.detach().float()  # (n_items, d)

    def score(self, users: np.ndarray, split: int) -> torch.Tensor:
        idx = torch.as_tensor(users, device=self.user_emb.device)
        return self.user_emb[idx] @ self.item_emb.T  # (B, n_items)


class SeenItems:
    """Per user, the items that precede ``split`` in time (the exclusion set), stored as CSR arrays."""

    def __init__(self, data: InteractionData, split: int) -> None:
        keep = data.splits < split
        users, items = data.users[keep], data.items[keep]  # sorted by user
        counts = np.bincount(users, minlength=data.n_users)
        self.indptr = np.concatenate([[0], np.cumsum(counts)])  # (n_users + 1,)
        self.indices = items  # (E,)

    def of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def pairs(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, items) of every seen item of ``users``; ``rows`` index into ``users``."""
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = self.indices[np.repeat(starts, lengths) + offsets]
        return torch.from_numpy(rows), torch.from_numpy(items)


def evaluate_split(
    data: InteractionData,
    ranker: ScoreRanker | TopKRanker,
    split: int,
    ks: Sequence[int] = (10, 20, 30),
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, float]:
    """HR@K and NDCG@K of ``ranker`` on ``split`` (validation or test) with full ranking and exclusion.

    Args:
        data: the snapshot; targets are ``data.targets(split)``, exclusion is everything before ``split``.
        ranker: a :class:`ScoreRanker` or a :class:`TopKRanker`.
        split: ``InteractionData.VALID`` or ``InteractionData.TEST``.
        ks: metric cut-offs.
        batch_size: target rows scored at once.
        progress: show a progress bar.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(
            f"split must be VALID ({InteractionData.VALID}) or TEST ({InteractionData.TEST}), got {split}"
        )
    users, targets = data.targets(split)
    seen = SeenItems(data, split)
    ranks = []
    starts = range(0, len(users), batch_size)
    bar = tqdm(starts, desc=f"eval {SPLIT_NAMES[split]}", disable=not progress, leave=False)
    with torch.no_grad():
        for start in bar:
            batch_users = users[start : start + batch_size]
            batch_targets = torch.from_numpy(targets[start : start + batch_size])
            if isinstance(ranker, TopKRanker):
                lists = ranker.topk(batch_users, split, max(ks), [seen.of(u) for u in batch_users])
                ranks.append(metrics.ranks_from_topk(lists, batch_targets))
            else:
                scores = ranker.score(batch_users, split)  # (B, n_items)
                rows, items = seen.pairs(batch_users)
                ranks.append(metrics.ranks_from_scores(scores, batch_targets, rows, items))
    return metrics.metrics_from_ranks(torch.cat(ranks), ks)


def evaluate_valid_test(
    data: InteractionData,
    ranker: ScoreRanker | TopKRanker,
    ks: Sequence[int] = (10, 20, 30),
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """``{"valid": {...}, "test": {...}}`` for one ranker."""
    return {
        name: evaluate_split(data, ranker, split, ks, batch_size, progress)
        for split, name in SPLIT_NAMES.items()
    }

"""Fold-in: embeddings and ID tokens for users and items that appeared after the model was trained.

TokenRec (Qu et al., arXiv 2406.10450) tokenizes an entity from its LightGCN embedding, so a user or item that
is new since the last retrain needs an embedding before it can be written in a prompt or retrieved. Scope:
the nightly run serves them without retraining (DESIGN.md, "Pipeline tasks"); the trained tables stay frozen.

The embedding of a new node is one LightGCN propagation step (He et al., SIGIR 2020, eq. 3) from its
neighbours in the current interactions, with the frozen trained tables as the neighbours' embeddings:

    e_i = sum_{u in N(i)} e_u / sqrt(|N(u)| |N(i)|)

renormalised to a weighted mean (weights ``|N(u)|^-1/2 / sum_v |N(v)|^-1/2``; the ``|N(i)|^-1/2`` factor is
common to all terms), then rescaled to the median norm of the trained table of its kind, so that the
tokenizer's encoders see inputs of the scale they were trained on. Degrees are counted in the current
interactions. New items are folded in from known users first, new users from known and just folded-in items,
and so on in rounds until nothing changes; a connected group of new users and items with no trained node at
all gets the mean of the trained table (a popularity-free prior) and is counted as ``cold``.

Tokens of new entities come from the trained tokenizer (:meth:`Tokenizer.encode`); with a disambiguation level
(``tokenizer.disambiguate``) a new entity takes the next free number of its K-tuple, as
:func:`tokenrec.models.quantizer.disambiguate` numbers the trained ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from tokenrec.models.quantizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class FoldIn:
    """Tables extended with the folded-in entities.

    Attributes:
        user: ``(n_users, d)`` float32, rows ``>= n_known_users`` folded in (zero where a user has no edge).
        item: ``(n_items, d)`` float32, likewise for items.
        new_users: indices of the users folded in, ascending.
        new_items: indices of the items folded in, ascending.
        stats: ``new_users``, ``new_items``, ``cold_users``, ``cold_items`` (no trained node reachable) and
            ``rounds``.
    """

    user: np.ndarray
    item: np.ndarray
    new_users: np.ndarray
    new_items: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)


def fold_in(
    user_table: np.ndarray,
    item_table: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
) -> FoldIn:
    """Embed every user and item of the interactions ``(users, items)`` that the trained tables do not cover.

    Args:
        user_table: ``(n_known_users, d)`` trained user embeddings (row = user index).
        item_table: ``(n_known_items, d)`` trained item embeddings.
        users, items: the current interactions, ``(E,)`` each; repeated pairs count once.
        n_users, n_items: sizes of the current ID maps (>= the trained table sizes).

    Returns:
        The extended tables; a node index ``>= n_known`` without any interaction keeps a zero row and is
        not listed in ``new_users`` / ``new_items``.
    """
    n_known_users, n_known_items = len(user_table), len(item_table)
    if n_users < n_known_users or n_items < n_known_items:
        raise ValueError(
            f"ID maps ({n_users} users, {n_items} items) are smaller than the trained tables "
            f"({n_known_users}, {n_known_items}); ID maps only grow"
        )
    dim = user_table.shape[1]
    graph = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (np.asarray(users), np.asarray(items))),
        shape=(n_users, n_items),
    )
    graph.sum_duplicates()
    graph.data[:] = 1.0
    user_degree = np.asarray(graph.sum(axis=1)).ravel()  # (n_users,)
    item_degree = np.asarray(graph.sum(axis=0)).ravel()  # (n_items,)

    user = np.zeros((n_users, dim), dtype=np.float32)
    item = np.zeros((n_items, dim), dtype=np.float32)
    user[:n_known_users] = user_table
    item[:n_known_items] = item_table
    user_ready = np.arange(n_users) < n_known_users  # has an embedding (trained, or folded in already)
    item_ready = np.arange(n_items) < n_known_items
    user_todo = ~user_ready & (user_degree > 0)
    item_todo = ~item_ready & (item_degree > 0)
    new_users, new_items = np.flatnonzero(user_todo), np.flatnonzero(item_todo)

    by_item = graph.T.tocsr()  # (n_items, n_users)
    rounds = 0
    while user_todo.any() or item_todo.any():
        rounds += 1
        items_done = _propagate(by_item, item, item_todo, item_ready, user, user_ready, user_degree)
        users_done = _propagate(graph, user, user_todo, user_ready, item, item_ready, item_degree)
        if not items_done and not users_done:
            break
    stats = {
        "new_users": len(new_users),
        "new_items": len(new_items),
        "cold_users": int(user_todo.sum()),
        "cold_items": int(item_todo.sum()),
        "rounds": rounds,
    }
    # groups of new nodes that reach no trained node: the mean of the trained table
    user[user_todo] = user_table.mean(axis=0) if len(user_table) else 0.0
    item[item_todo] = item_table.mean(axis=0) if len(item_table) else 0.0
    _rescale(user, new_users, user_table)
    _rescale(item, new_items, item_table)
    if len(new_users) or len(new_items):
        log.info("fold-in: %s", stats)
    return FoldIn(user, item, new_users, new_items, stats)


def _propagate(
    adjacency: sp.csr_matrix,
    target: np.ndarray,
    todo: np.ndarray,
    ready: np.ndarray,
    source: np.ndarray,
    source_ready: np.ndarray,
    source_degree: np.ndarray,
) -> bool:
    """One round: every ``todo`` row of ``target`` with a ready neighbour gets the weighted neighbour mean.

    Args:
        adjacency: ``(n_target, n_source)`` 0/1 interactions.
        target: the table to fill, ``(n_target, d)``; ``todo`` and ``ready`` are updated in place.
        source: the neighbours' table ``(n_source, d)``; only ``source_ready`` rows are used.
        source_degree: ``(n_source,)`` neighbour degrees, for the ``|N(u)|^-1/2`` weights.

    Returns:
        Whether any row was filled.
    """
    rows = np.flatnonzero(todo)
    if not len(rows):
        return False
    weights = np.where(source_ready, 1.0 / np.sqrt(np.maximum(source_degree, 1.0)), 0.0)  # (n_source,)
    block = adjacency[rows] @ sp.diags(weights.astype(np.float32))  # (R, n_source)
    total = np.asarray(block.sum(axis=1)).ravel()  # (R,)
    filled = rows[total > 0]
    if not len(filled):
        return False
    mean = (block[total > 0] @ source.astype(np.float64)) / total[total > 0, None]  # (R', d)
    target[filled] = mean.astype(np.float32)
    todo[filled] = False
    ready[filled] = True
    return True


def _rescale(table: np.ndarray, rows: np.ndarray, trained: np.ndarray) -> None:
    """Scale ``table[rows]`` to the median row norm of ``trained`` (in place); zero rows stay zero."""
    if not len(rows) or not len(trained):
        return
    target = float(np.median(np.linalg.norm(trained.astype(np.float64), axis=1)))
    norms = np.linalg.norm(table[rows].astype(np.float64), axis=1, keepdims=True)  # (R, 1)
    table[rows] = (table[rows] * (target / np.maximum(norms, 1e-12))).astype(np.float32)


def extend_codes(
    codes: np.ndarray, tokenizer: Tokenizer, vectors: np.ndarray, rows: np.ndarray, vocab_size: int
) -> np.ndarray:
    """The token table ``codes`` ``(n_known, K')`` extended to ``len(vectors)`` rows with tokens of ``rows``.

    Args:
        codes: the trained token table; ``K' = K`` or ``K + 1`` with a disambiguation level.
        tokenizer: the trained tokenizer of this kind.
        vectors: ``(n, d)`` embeddings, rows ``>= len(codes)`` folded in.
        rows: the indices to tokenize (``>= len(codes)``, ascending); other new rows get code 0 everywhere
            (they have no interaction, so no prompt ever shows them).
        vocab_size: codes per level in the LLM's ID vocabulary; a disambiguation number is capped below it.

    Returns:
        ``(len(vectors), K')`` int64.
    """
    n_known, width = codes.shape
    out = np.zeros((len(vectors), width), dtype=np.int64)
    out[:n_known] = codes
    if not len(rows):
        return out
    base = tokenizer.encode(torch.from_numpy(np.ascontiguousarray(vectors[rows]))).cpu().numpy()  # (R, K)
    levels = tokenizer.num_levels
    out[rows, :levels] = base
    if width > levels:  # disambiguation: the next free number among entities sharing the K-tuple
        taken: dict[tuple[int, ...], int] = {}
        for row in codes:
            key = tuple(int(c) for c in row[:levels])
            taken[key] = max(taken.get(key, 0), int(row[levels]) + 1)
        capped = 0
        for row in rows:
            key = tuple(int(c) for c in out[row, :levels])
            number = taken.get(key, 0)
            taken[key] = number + 1
            capped += number >= vocab_size
            out[row, levels] = min(number, vocab_size - 1)
        if capped:
            log.warning(
                "%d folded-in entities share a full disambiguation level; their last token repeats", capped
            )
    return out

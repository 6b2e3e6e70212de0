"""Batch inference engine: every active user -> history prompt -> LLM4Rec -> top-K items -> output rows.

TokenRec (Qu et al., arXiv 2406.10450), generative retrieval at serving time: one forward pass of the
fine-tuned backbone per user and one cosine search over the GNN item embeddings, the user's seen items
excluded. Scope: the in-memory engine shared by the packaged MLflow model (:mod:`tokenrec.packaging`) and the
nightly ``batch_inference`` task; no registry or lake access here.

- :class:`Recommender` wraps a loaded :class:`~tokenrec.tokenrec_scorer.TokenRecScorer` with token tables
  indexed by user/item index and an item index whose rows need not be the item indices (items folded in
  since training are appended after the trained ones, and item indices without any interaction are absent).
- :func:`fold_in_recommender` extends the trained tables with users and items that are new since training
  (:mod:`tokenrec.foldin`) and appends the new items to the index.
- :func:`write_recommendations` streams the active users in batches of ``inference.user_batch_size`` and
  writes one Parquet row group per batch in the exact ``RECOMMENDATIONS`` schema, so memory stays flat in the
  number of users (the snapshot itself, the tables and one batch are held).

The prompt is the paper's history prompt over the user's most recent ``H`` interactions of the snapshot (all
splits, time order); the exclusion set is every item of the user's snapshot history.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tokenrec import schema
from tokenrec.data.interactions import InteractionData
from tokenrec.foldin import extend_codes, fold_in
from tokenrec.models.quantizer import Tokenizer
from tokenrec.prompts import history_codes
from tokenrec.retrieval import ItemIndex
from tokenrec.tokenrec_scorer import TokenRecScorer, variant_prompts

log = logging.getLogger(__name__)


class CsrSequences(Sequence[np.ndarray]):
    """Per user index, the time-ordered items of a CSR layout (``indptr`` ``(n_users + 1,)``, ``items``)."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)

    @classmethod
    def of(cls, data: InteractionData) -> CsrSequences:
        """Every interaction of ``data`` (all splits), per user in time order."""
        counts = np.bincount(data.users, minlength=data.n_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]), data.items)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, user: int) -> np.ndarray:  # type: ignore[override]
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


class Recommender:
    """A trained LLM4Rec with token tables and an item index, possibly extended by fold-in.

    Args:
        scorer: the loaded model (its backbone, projection, device, batching and autocast are used).
        user_codes: ``(n_users, K)`` tokens by user index.
        item_codes: ``(n_items, K)`` tokens by item index.
        index: the retrieval index; row r holds item ``index_items[r]``.
        index_items: ``(n_rows,)`` item index of every index row.
    """

    def __init__(
        self,
        scorer: TokenRecScorer,
        user_codes: np.ndarray,
        item_codes: np.ndarray,
        index: ItemIndex,
        index_items: np.ndarray,
    ) -> None:
        if len(index_items) != len(index):
            raise ValueError(f"{len(index_items)} index item ids for {len(index)} index rows")
        self.scorer = scorer
        self.user_codes = np.asarray(user_codes)
        self.item_codes = np.asarray(item_codes)
        self.index = index
        self.index_items = np.asarray(index_items, dtype=np.int64)
        self.item_row = np.full(len(self.item_codes), -1, dtype=np.int64)  # (n_items,) index row, -1 = absent
        self.item_row[self.index_items] = np.arange(len(self.index_items))

    @classmethod
    def trained(cls, scorer: TokenRecScorer) -> Recommender:
        """The trained tables as they are: index row j is item j."""
        return cls(scorer, scorer.user_codes, scorer.item_codes, scorer.index, np.arange(len(scorer.index)))

    def recommend(
        self, users: np.ndarray, sequences: Sequence[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, items)`` ``(U, k)`` of ``users``, never an item of their ``sequences``.

        Items are item indices (-1 and score -inf beyond a user's unseen items, always at the end).
        """
        users = np.asarray(users, dtype=np.int64)
        histories = history_codes(sequences, users, self.item_codes, self.scorer.history_len)
        prompts = variant_prompts("full", self.user_codes[users], histories, self.scorer.history_style)
        z = self.scorer.embed_prompts(prompts)  # (U, d)
        exclude = []
        for user in users:
            rows = self.item_row[np.asarray(sequences[int(user)], dtype=np.int64)]
            exclude.append(rows[rows >= 0])
        scores, rows = self.index.search(z, k, exclude=exclude)  # (U, k) each
        items = np.where(rows >= 0, self.index_items[np.maximum(rows, 0)], -1)
        return scores, items


def fold_in_recommender(
    scorer: TokenRecScorer,
    embeddings: dict[str, np.ndarray],
    tokenizers: dict[str, Tokenizer],
    tokenizer_input: str,
    retrieval_input: str,
    data: InteractionData,
    vocab_size: int,
) -> tuple[Recommender, dict[str, Any]]:
    """The recommender for ``data``: trained tables plus users and items that are new since training.

    Args:
        scorer: the loaded model; the new items go into a copy of its item index.
        embeddings: the run's GNN tables ``user``, ``item``, ``user_ego``, ``item_ego`` (float32 arrays).
        tokenizers: the trained ``user`` and ``item`` tokenizers.
        tokenizer_input: which GNN output the tokenizers read, ``propagated`` or ``ego``.
        retrieval_input: the item table the index holds, ``item`` or ``item_ego``.
        data: the current interactions snapshot.
        vocab_size: codes per level in the LLM's ID vocabulary.

    Returns:
        The recommender and fold-in statistics (``new_users``, ``new_items``, ``cold_*``, ``rounds``).
    """
    suffix = "_ego" if tokenizer_input == "ego" else ""
    tok = fold_in(
        embeddings[f"user{suffix}"],
        embeddings[f"item{suffix}"],
        data.users,
        data.items,
        data.n_users,
        data.n_items,
    )
    user_codes = extend_codes(scorer.user_codes, tokenizers["user"], tok.user, tok.new_users, vocab_size)
    item_codes = extend_codes(scorer.item_codes, tokenizers["item"], tok.item, tok.new_items, vocab_size)
    if retrieval_input == f"item{suffix}":
        item_vectors = tok.item
    else:  # the index holds the other GNN output than the tokenizers read
        user_key = retrieval_input.replace("item", "user")
        item_vectors = fold_in(
            embeddings[user_key],
            embeddings[retrieval_input],
            data.users,
            data.items,
            data.n_users,
            data.n_items,
        ).item
    index = scorer.index
    if len(tok.new_items):  # a copy: the trained index stays as the packaged model serves it
        index = ItemIndex(scorer.index.dim, scorer.index.cfg)
        index.vectors = scorer.index.vectors.copy()
        index.index = faiss.clone_index(scorer.index.index)
        index.add(item_vectors[tok.new_items])
    index_items = np.concatenate([np.arange(len(scorer.item_codes)), tok.new_items])
    return Recommender(scorer, user_codes, item_codes, index, index_items), tok.stats


def recommendation_table(
    users: np.ndarray,
    scores: np.ndarray,
    items: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    model_name: str,
    model_version: str,
    generated_at: dt.datetime,
) -> pa.Table:
    """Rows ``(user_id, rank, item_id, score, model_name, model_version, generated_at)`` of one batch.

    Args:
        users: ``(U,)`` user indices; ``scores``/``items`` ``(U, k)`` from :meth:`Recommender.recommend`.
        user_ids, item_ids: raw ids by index (the ID maps).
    """
    valid = items >= 0  # (U, k); the filled slots are a prefix of each row
    row_user, rank0 = np.nonzero(valid)
    n = len(row_user)
    return pa.table(
        {
            schema.USER_ID: pa.array(user_ids[users[row_user]], pa.string()),
            schema.RANK: pa.array((rank0 + 1).astype(np.int16), pa.int16()),
            schema.ITEM_ID: pa.array(item_ids[items[valid]], pa.string()),
            schema.SCORE: pa.array(scores[valid].astype(np.float32), pa.float32()),
            schema.MODEL_NAME: pa.array([model_name] * n, pa.string()),
            schema.MODEL_VERSION: pa.array([model_version] * n, pa.string()),
            schema.GENERATED_AT: pa.array([generated_at] * n, schema.UTC_TS),
        },
        schema=schema.RECOMMENDATIONS,
    )


def write_recommendations(
    recommender: Recommender,
    data: InteractionData,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    path: Path,
    k: int,
    batch_size: int,
    model_name: str,
    model_version: str,
    generated_at: dt.datetime,
    progress: bool = False,
) -> dict[str, int]:
    """Recommend for every user with at least one interaction in ``data`` and write one Parquet file.

    Users are processed in index order, ``batch_size`` at a time, each batch one row group; the output is a
    function of the inputs only (no wall clock, no randomness), so a rerun writes identical rows.

    Returns:
        ``rows``, ``users`` (with at least one row) and ``active_users``.
    """
    sequences = CsrSequences.of(data)
    active = np.flatnonzero(sequences.lengths() > 0)
    rows = users_with_rows = 0
    with pq.ParquetWriter(path, schema.RECOMMENDATIONS) as writer:
        starts = range(0, len(active), batch_size)
        for start in tqdm(starts, desc="batch inference", unit="batch", disable=not progress):
            users = active[start : start + batch_size]
            scores, items = recommender.recommend(users, sequences, k)
            table = recommendation_table(
                users, scores, items, user_ids, item_ids, model_name, model_version, generated_at
            )
            writer.write_table(table)
            rows += table.num_rows
            users_with_rows += int((items[:, 0] >= 0).sum())
    log.info("wrote %d rows for %d of %d active users to %s", rows, users_with_rows, len(active), path)
    return {"rows": rows, "users": users_with_rows, "active_users": len(active)}

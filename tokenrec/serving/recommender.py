"""Batch inference engine: every active user -> history prompt -> LLM4Rec -> top-K items -> output rows.

TokenRec (Qu et al., arXiv 2406.10450), generative retrieval at serving time: one forward pass of the
fine-tuned backbone per user and one cosine search over the GNN item embeddings, the user's seen items
excluded. Scope: the in-memory engine shared by the packaged MLflow model (:mod:`tokenrec.mlops.packaging`) and the
nightly ``batch_inference`` task; no registry or lake access here.

- :class:`Recommender` wraps a loaded :class:`~tokenrec.llm.scorer.TokenRecScorer` with token tables
  indexed by user/item index and an item index whose rows need not be the item indices (items folded in
  since training are appended after the trained ones, and item indices without any interaction are absent).
- :func:`fold_in_tables` extends the trained token tables with users and items that are new since training
  (:mod:`tokenrec.serving.foldin`); :meth:`Recommender.folded` appends the new items to a copy of the index. The
  tables are computed once (on the driver with the Spark engine) and shipped, so both engines see the same.
- :func:`write_recommendations` streams the active users in batches of ``inference.user_batch_size`` and
  writes one Parquet row group per batch in the exact ``RECOMMENDATIONS`` schema, so memory stays flat in the
  number of users: the snapshot's arrays (O(interactions)), the tables and one batch are held, never the
  output, and raw ids stay Arrow arrays (no Python object per user). :mod:`tokenrec.serving.spark_engine` runs the
  same batches on Spark executors.

The prompt is the paper's history prompt over the user's most recent ``H`` interactions of the snapshot (all
splits, time order); the exclusion set is every item of the user's snapshot history.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tokenrec import schema
from tokenrec.data.interactions import InteractionData
from tokenrec.llm.prompts import history_codes
from tokenrec.llm.scorer import TokenRecScorer
from tokenrec.models.quantizer import Tokenizer
from tokenrec.serving.foldin import extend_codes, fold_in
from tokenrec.serving.retrieval import ItemIndex

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

    @classmethod
    def folded(cls, scorer: TokenRecScorer, tables: FoldedTables) -> Recommender:
        """The trained model with the fold-in ``tables``; new items go into a copy of the trained index."""
        index = scorer.index
        if len(tables.new_items):  # a copy: the trained index stays as the packaged model serves it
            index = ItemIndex(scorer.index.dim, scorer.index.cfg)
            index.vectors = scorer.index.vectors.copy()
            index.index = faiss.clone_index(scorer.index.index)
            index.add(tables.new_item_vectors)
        index_items = np.concatenate([np.arange(len(scorer.index)), tables.new_items])
        return cls(scorer, tables.user_codes, tables.item_codes, index, index_items)

    def recommend(
        self, users: np.ndarray, sequences: Sequence[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, items)`` ``(U, k)`` of ``users``, never an item of their ``sequences``.

        Items are item indices (-1 and score -inf beyond a user's unseen items, always at the end).
        """
        users = np.asarray(users, dtype=np.int64)
        return self.recommend_histories(self.user_codes[users], [sequences[int(u)] for u in users], k)

    def recommend_histories(
        self, user_codes: np.ndarray, histories: Sequence[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, items)`` ``(U, k)`` of users given by their tokens and histories.

        Args:
            user_codes: ``(U, K')`` the users' ID tokens.
            histories: per user, every item index of their history in time order (the prompt shows the most
                recent ``H``; all of them are excluded).
            k: items per user.
        """
        positions = np.arange(len(histories))
        shown = history_codes(histories, positions, self.item_codes, self.scorer.history_len)
        z = self.scorer.embed_codes(np.asarray(user_codes), shown, "full")  # (U, d)
        exclude = []
        for history in histories:
            rows = self.item_row[np.asarray(history, dtype=np.int64)]
            exclude.append(rows[rows >= 0])
        scores, rows = self.index.search(z, k, exclude=exclude, device=self.scorer.search_device)  # (U, k) each
        items = np.where(rows >= 0, self.index_items[np.maximum(rows, 0)], -1)
        return scores, items


@dataclass
class FoldedTables:
    """A trained model's token tables extended to the current ID maps, and the items new to its index.

    Attributes:
        user_codes: ``(n_users, K')`` tokens by user index (may be empty where users come with their own).
        item_codes: ``(n_items, K')`` tokens by item index.
        new_items: ``(R,)`` item indices appended to the index, ascending.
        new_item_vectors: ``(R, d)`` their retrieval vectors (normalised by the index unless retrieval.normalize_items is false).
        stats: fold-in statistics (``new_users``, ``new_items``, ``cold_*``, ``rounds``).
    """

    user_codes: np.ndarray
    item_codes: np.ndarray
    new_items: np.ndarray
    new_item_vectors: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def item_side(self) -> FoldedTables:
        """The same tables without the user tokens (what every Spark task needs, shipped once)."""
        empty = np.zeros((0, self.user_codes.shape[1]), dtype=self.user_codes.dtype)
        return FoldedTables(empty, self.item_codes, self.new_items, self.new_item_vectors, dict(self.stats))

    def item_digest(self) -> str:
        """SHA-256 over the item side: a shipped copy is the driver's exactly when the digests agree."""
        digest = hashlib.sha256()
        for array in (self.item_codes, self.new_items, self.new_item_vectors):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def fold_in_tables(
    scorer: TokenRecScorer,
    embeddings: dict[str, np.ndarray],
    tokenizers: dict[str, Tokenizer],
    tokenizer_input: str,
    retrieval_input: str,
    data: InteractionData,
    vocab_size: int,
) -> FoldedTables:
    """The trained tables extended by the users and items of ``data`` that are new since training.

    Args:
        scorer: the loaded model (its trained token tables).
        embeddings: the run's GNN tables ``user``, ``item``, ``user_ego``, ``item_ego`` (float32 arrays).
        tokenizers: the trained ``user`` and ``item`` tokenizers.
        tokenizer_input: which GNN output the tokenizers read, ``propagated`` or ``ego``.
        retrieval_input: the item table the index holds, ``item`` or ``item_ego``.
        data: the current interactions snapshot.
        vocab_size: codes per level in the LLM's ID vocabulary.
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
    new_vectors = np.ascontiguousarray(item_vectors[tok.new_items], dtype=np.float32)
    return FoldedTables(user_codes, item_codes, tok.new_items.astype(np.int64), new_vectors, tok.stats)


def fold_in_bundle(scorer: TokenRecScorer, bundle: Any, data: InteractionData) -> FoldedTables:
    """:func:`fold_in_tables` for a packaged model: its GNN tables, tokenizers and manifest settings.

    Args:
        scorer: the packaged model's scorer.
        bundle: its :class:`tokenrec.mlops.packaging.ModelBundle`.
        data: the interactions to fold in from.
    """
    return fold_in_tables(
        scorer,
        bundle.embeddings(),
        bundle.tokenizers(),
        bundle.manifest["tokenizer_input"],
        bundle.manifest["item_vectors"],
        data,
        int(bundle.manifest["codebook_size"]),
    )


@dataclass(frozen=True)
class OutputMeta:
    """What every output row of one run carries besides the recommendation itself."""

    model_name: str
    model_version: str
    generated_at: dt.datetime  # the logical date at 00:00 UTC, never the clock


def recommendation_table(
    users: np.ndarray,
    scores: np.ndarray,
    items: np.ndarray,
    user_ids: pa.Array,
    item_ids: pa.Array,
    meta: OutputMeta,
) -> pa.Table:
    """Rows ``(user_id, rank, item_id, score, model_name, model_version, generated_at)`` of one batch.

    Args:
        users: ``(U,)`` positions in ``user_ids``.
        scores, items: ``(U, k)`` from :meth:`Recommender.recommend`.
        user_ids, item_ids: raw ids by position and by item index (string arrays).
        meta: model name, version and the logical date.
    """
    valid = items >= 0  # (U, k); the filled slots are a prefix of each row
    row_user, rank0 = np.nonzero(valid)
    n = len(row_user)
    return pa.table(
        {
            schema.USER_ID: user_ids.take(pa.array(users[row_user], pa.int64())).cast(pa.string()),
            schema.RANK: pa.array((rank0 + 1).astype(np.int16), pa.int16()),
            schema.ITEM_ID: item_ids.take(pa.array(items[valid], pa.int64())).cast(pa.string()),
            schema.SCORE: pa.array(scores[valid].astype(np.float32), pa.float32()),
            schema.MODEL_NAME: pa.repeat(pa.scalar(meta.model_name, pa.string()), n),
            schema.MODEL_VERSION: pa.repeat(pa.scalar(meta.model_version, pa.string()), n),
            schema.GENERATED_AT: pa.repeat(pa.scalar(meta.generated_at, schema.UTC_TS), n),
        },
        schema=schema.RECOMMENDATIONS,
    )


def user_batches(active: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(batch number, users)``: the active users in index order, ``batch_size`` at a time.

    Both engines cut the same batches, so every forward pass and search sees the same users.
    """
    for number, start in enumerate(range(0, len(active), batch_size)):
        yield number, active[start : start + batch_size]


def write_recommendations(
    recommender: Recommender,
    data: InteractionData,
    user_ids: pa.Array,
    item_ids: pa.Array,
    path: Path,
    k: int,
    batch_size: int,
    meta: OutputMeta,
    progress: bool = False,
) -> dict[str, int]:
    """Recommend for every user with at least one interaction in ``data`` and write one Parquet file.

    Users are processed in index order, ``batch_size`` at a time, each batch one row group; the output is a
    function of the inputs only (no wall clock, no randomness), so a rerun writes identical rows.

    Args:
        user_ids, item_ids: raw ids by user and item index (the ID maps).

    Returns:
        ``rows``, ``users`` (with at least one row) and ``active_users``.
    """
    sequences = CsrSequences.of(data)
    active = np.flatnonzero(sequences.lengths() > 0)
    rows = users_with_rows = 0
    n_batches = -(-len(active) // batch_size)
    with pq.ParquetWriter(path, schema.RECOMMENDATIONS) as writer:
        batches = tqdm(user_batches(active, batch_size), total=n_batches, desc="batch inference",
                       unit="batch", disable=not progress)  # fmt: skip
        for _, users in batches:
            scores, items = recommender.recommend(users, sequences, k)
            table = recommendation_table(users, scores, items, user_ids, item_ids, meta)
            writer.write_table(table)
            rows += table.num_rows
            users_with_rows += int((items[:, 0] >= 0).sum())
    log.info("wrote %d rows for %d of %d active users to %s", rows, users_with_rows, len(active), path)
    return {"rows": rows, "users": users_with_rows, "active_users": len(active)}

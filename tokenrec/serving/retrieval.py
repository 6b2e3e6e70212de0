"""Generative retrieval: the top-K items of each user by cosine similarity, from a faiss index.

TokenRec (Qu et al., arXiv 2406.10450), generative retrieval: instead of decoding item names, the LLM's
projected hidden state ``z_i`` is scored against every item's GNN embedding ``q_j`` with
``y_ij = cos(z_i, q_j)`` and the top-K items are returned. Scope: an index over L2-normalised float32 item
vectors (exact inner product, ``IndexFlatIP``, by default; IVF or HNSW for large catalogs), appending items
that are new since training, top-K search with the user's seen items excluded, and saving/loading the index.

Exactness and determinism (RELIABILITY.md R8). Per user the search over-fetches ``K + |seen|`` candidates
(plus a small margin), drops the seen ones, re-scores those that can still reach the top K exactly (float64
dot products rounded to float32: identical vectors get identical scores) and orders them by score descending,
then item id ascending. With the exact index, when the last candidate fetched could still tie with the K-th
one kept (within faiss's float32 error), that user is searched again with twice the candidates, so the cut
never depends on faiss's internal order of equal scores. Users with fewer than K unseen items get id -1 and
score -inf in the remaining slots.

On a GPU (``search(..., device=cuda)``, exact index only) the same top-K is computed by brute force on the
device: float64 dot products of the same float32 vectors rounded to float32, seen items masked, ordered by
score then item id. The faiss path's numpy post-processing runs on one CPU core and held a whole H100 pipeline
to 6,300-9,500 users/s (docs/benchmarks/speed-llm-gpu-cpu-search.json). The results are the same (a test checks
it on the CPU); only the order in which float64 sums are added differs, which rounding to float32 hides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from tqdm import tqdm

from tokenrec.config import RetrievalConfig
from tokenrec.errors import ConfigError
from tokenrec.storage import atomic_write_bytes, atomic_write_json, read_json

log = logging.getLogger(__name__)

# faiss scores float32 dot products of unit vectors; its error is far below this for d up to a few thousand.
TIE_TOLERANCE = 1e-5
FETCH_MARGIN = 8  # candidates fetched beyond K + |seen|, so that the last one rarely ties the K-th


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 ``(n, d)``; all-zero rows stay zero."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a (n, d) matrix, got shape {x.shape}")
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12).astype(np.float32), dtype=np.float32)


class ItemIndex:
    """Item vectors (row = item index) in a faiss index, searched by inner product with unit-norm queries.

    With ``cfg.normalize_items`` (default) the items are normalised too, so the score is the cosine similarity
    of TokenRec; without it they keep their GNN norms and the score is ``cos * |item|``.
    """

    def __init__(self, dim: int, cfg: RetrievalConfig | None = None) -> None:
        self.dim = dim
        self.cfg = cfg or RetrievalConfig()
        self.vectors = np.zeros(
            (0, dim), dtype=np.float32
        )  # (n_items, d) as indexed (normalised by default), kept for exact re-scoring
        self.index: faiss.Index | None = None  # created on the first add (IVF trains on those items)
        self._on_device: tuple[str, torch.Tensor] | None = None  # (device, float64 vectors) for GPU search

    @classmethod
    def build(cls, item_vectors: np.ndarray, cfg: RetrievalConfig | None = None) -> ItemIndex:
        """An index over ``item_vectors`` ``(n_items, d)``; row j is item index j."""
        index = cls(int(np.asarray(item_vectors).shape[1]), cfg)
        index.add(item_vectors)
        return index

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def exact(self) -> bool:
        return self.cfg.index == "flat"

    def add(self, item_vectors: np.ndarray) -> np.ndarray:
        """Append items (e.g. new since training); return their item indices, which continue ``len(self)``."""
        if self.cfg.normalize_items:
            x = normalize_rows(item_vectors)
        else:
            x = np.ascontiguousarray(item_vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"item vectors must be (n, {self.dim}), got shape {x.shape}")
        if self.index is None:
            self.index = self._new_index(x)
        start = len(self)
        self.index.add(x)
        self.vectors = np.concatenate([self.vectors, x])
        self._on_device = None
        log.info("item index (%s): %d items added, %d in total", self.cfg.index, len(x), len(self))
        return np.arange(start, len(self), dtype=np.int64)

    def _new_index(self, first: np.ndarray) -> faiss.Index:
        if self.cfg.index == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.cfg.index == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.cfg.hnsw_ef_construction
            return index
        # default: about 4 * sqrt(n) lists, but at least 39 training items per list (faiss's minimum)
        nlist = self.cfg.ivf_nlist or max(1, min(int(4 * np.sqrt(len(first))), len(first) // 39))
        nlist = min(nlist, len(first))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(first)  # later additions reuse these centroids
        return index

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        progress: bool = False,
        device: torch.device | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query (cosine by default, see the class), never one of the user's ``exclude`` items.

        Args:
            queries: ``(U, d)`` user preference vectors (normalised here).
            k: items per user.
            exclude: per query row, the item indices it must not get (seen items); None excludes nothing.
            progress: show a progress bar over user batches.
            device: a torch device (a GPU) to score on by brute force instead of with faiss; exact index only,
                same results (the other index types ignore it).

        Returns:
            ``scores`` ``(U, k)`` float32 (descending) and ``ids`` ``(U, k)`` int64 (ties by ascending id);
            slots beyond a user's unseen items hold id -1 and score -inf.
        """
        q = normalize_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} dimensions, the index has {self.dim}")
        if k < 1:
            raise ConfigError(f"top-k must be >= 1, got {k}")
        n_users, n_items = len(q), len(self)
        if exclude is not None and len(exclude) != n_users:
            raise ValueError(f"{n_users} queries but {len(exclude)} exclusion lists")
        seen = [np.asarray(s, dtype=np.int64) for s in exclude] if exclude is not None else None
        scores = np.full((n_users, k), -np.inf, dtype=np.float32)
        ids = np.full((n_users, k), -1, dtype=np.int64)
        if n_users == 0 or n_items == 0:
            return scores, ids
        if device is not None and self.exact:
            return self._search_on_device(q, k, seen, device, scores, ids)
        n_seen = np.array([len(s) for s in seen]) if seen is not None else np.zeros(n_users, dtype=np.int64)
        order = np.argsort(n_seen, kind="stable")  # users with similar |seen| share one fetch size
        batches = range(0, n_users, self.cfg.batch_size)
        for start in tqdm(batches, desc="retrieval", unit="batch", disable=not progress):
            users = order[start : start + self.cfg.batch_size]
            fetch = min(n_items, k + int(n_seen[users].max()) + FETCH_MARGIN)
            while len(users):
                users = self._search_batch(q, users, fetch, k, seen, scores, ids)
                fetch = min(n_items, 2 * fetch)
        return scores, ids

    def _search_batch(
        self,
        q: np.ndarray,
        users: np.ndarray,
        fetch: int,
        k: int,
        seen: list[np.ndarray] | None,
        scores: np.ndarray,
        ids: np.ndarray,
    ) -> np.ndarray:
        """Fill ``scores``/``ids`` for ``users``; return those that need a larger ``fetch``."""
        self._set_search_params(fetch)
        found_scores, found = self.index.search(q[users], fetch)  # (B, F), (B, F); F = fetch
        keep = found >= 0  # (B, F) faiss pads with -1 when it has fewer than F
        if seen is not None:
            keep &= ~_seen_mask(found, [seen[u] for u in users], len(self))
        kept = keep.sum(axis=1)  # (B,)
        short = kept < k
        # the K-th kept faiss score; only candidates within TIE_TOLERANCE of it can reach the top K
        kth_position = np.argmax(np.cumsum(keep, axis=1) >= k, axis=1)  # (B,)
        kth_found = np.where(short, -np.inf, found_scores[np.arange(len(users)), kth_position])
        contender = keep & (found_scores >= kth_found[:, None] - TIE_TOLERANCE)  # (B, F)
        rows, cols = np.nonzero(contender)
        dots = (self.vectors[found[rows, cols]].astype(np.float64) * q[users[rows]].astype(np.float64)).sum(
            -1
        )
        exact = np.full(found.shape, -np.inf, dtype=np.float32)  # (B, F)
        exact[rows, cols] = dots.astype(np.float32)  # re-scored exactly: identical vectors tie exactly
        candidates = np.where(contender, found, np.iinfo(np.int64).max)  # the others sort last
        order = np.lexsort((candidates, -exact), axis=-1)[
            :, :k
        ]  # (B, k): score descending, then id ascending
        top_scores = np.full((len(users), k), -np.inf, dtype=np.float32)  # (B, k); fetch < k on a tiny catalog
        top_ids = np.full((len(users), k), -1, dtype=np.int64)
        top_scores[:, : order.shape[1]] = np.take_along_axis(exact, order, axis=1)
        top_ids[:, : order.shape[1]] = np.take_along_axis(candidates, order, axis=1)
        # the index has more to give unless it returned everything or fewer than asked
        more = (fetch < len(self)) & (found >= 0).all(axis=1)
        # exact index: unfetched items score <= the last fetched one; if that could tie the K-th, fetch more
        cut_tie = self.exact & ~short & (found_scores[:, -1] >= kth_found - TIE_TOLERANCE)
        again = more & (short | cut_tie)
        done = ~again
        filled = np.arange(k)[None, :] < kept[:, None]  # (B, k)
        scores[users[done]] = np.where(filled[done], top_scores[done], -np.inf)
        ids[users[done]] = np.where(filled[done], top_ids[done], -1)
        return users[again]

    def _search_on_device(
        self,
        q: np.ndarray,
        k: int,
        seen: list[np.ndarray] | None,
        device: torch.device,
        scores: np.ndarray,
        ids: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by brute force on ``device``: every item scored, the same order as :meth:`search`."""
        n_users, n_items = len(q), len(self)
        if self._on_device is None or self._on_device[0] != str(device):  # copied once, not per call
            self._on_device = (str(device), torch.as_tensor(self.vectors, device=device).double())
        items = self._on_device[1]  # (N, d)
        width = min(n_items, k + FETCH_MARGIN)  # candidates sorted per user; more only where the cut ties
        keep = min(k, n_items)
        step = max(1, min(n_users, 2**26 // max(n_items, 1)))  # (B, N) float64 scores: at most 512 MiB
        for start in range(0, n_users, step):
            rows = slice(start, start + step)
            batch = torch.as_tensor(q[rows], device=device).double()  # (B, d)
            s = (batch @ items.T).float()  # (B, N): float64 dots rounded to float32, as the faiss path
            if seen is not None:
                user, item = _seen_pairs(seen[rows], n_items)
                s[torch.as_tensor(user, device=device), torch.as_tensor(item, device=device)] = -torch.inf
            values, top = torch.topk(s, width, dim=1)  # (B, W), descending; ties in no particular order
            last = values[:, -1]  # (B,) the W-th best score
            by_id = torch.argsort(top, dim=1, stable=True)
            values, top = values.gather(1, by_id), top.gather(1, by_id)
            by_score = torch.argsort(values, dim=1, descending=True, stable=True)  # ties: lower id first
            values, top = values.gather(1, by_score)[:, :keep], top.gather(1, by_score)[:, :keep]
            # an item left out of the W candidates may tie the K-th: order those users' whole rows
            cut_tie = (values[:, -1] > -torch.inf) & (last >= values[:, -1]) & (width < n_items)
            for row in torch.nonzero(cut_tie).flatten().tolist():
                row_values, row_items = torch.sort(s[row], descending=True, stable=True)
                values[row], top[row] = row_values[:keep], row_items[:keep]
            values, top = values.cpu().numpy(), top.cpu().numpy()
            found = values > -np.inf  # seen items (masked) and nothing else score -inf
            scores[rows, :keep] = np.where(found, values, -np.inf)
            ids[rows, :keep] = np.where(found, top, -1)
        return scores, ids

    def _set_search_params(self, fetch: int) -> None:
        if self.cfg.index == "hnsw":
            self.index.hnsw.efSearch = max(self.cfg.hnsw_ef_search, fetch)
        elif self.cfg.index == "ivf":
            self.index.nprobe = self.cfg.ivf_nprobe

    # ----------------------------------------------------------------------------------------- persistence

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss``, ``vectors.safetensors`` and ``index.json`` (each file atomically)."""
        if self.index is None:
            raise ValueError("cannot save an empty item index; add items first")
        folder = Path(folder)
        atomic_write_bytes(folder / "index.faiss", faiss.serialize_index(self.index).tobytes())
        atomic_write_bytes(folder / "vectors.safetensors", save_arrays({"vectors": self.vectors}))
        atomic_write_json(folder / "index.json", {"dim": self.dim, "n_items": len(self), **vars(self.cfg)})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ItemIndex:
        """Read an index written by :meth:`save`; its search settings are the saved ones."""
        folder = Path(folder)
        meta = read_json(folder / "index.json")
        dim, n_items = meta.pop("dim"), meta.pop("n_items")
        index = cls(dim, RetrievalConfig(**meta))
        index.vectors = load_arrays((folder / "vectors.safetensors").read_bytes())["vectors"]
        index.index = faiss.deserialize_index(
            np.frombuffer((folder / "index.faiss").read_bytes(), dtype=np.uint8)
        )
        if len(index.vectors) != n_items or index.index.ntotal != n_items:
            raise ConfigError(
                f"item index in {folder} is inconsistent: index.json says {n_items} items, vectors hold "
                f"{len(index.vectors)}, the faiss index {index.index.ntotal}; rebuild it"
            )
        return index


def _seen_pairs(seen: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, items)`` of every seen item of every row, ids outside ``[0, n_items)`` dropped."""
    seen = [s[(s >= 0) & (s < n_items)] for s in seen]
    rows = np.repeat(np.arange(len(seen), dtype=np.int64), [len(s) for s in seen])
    return rows, np.concatenate([np.zeros(0, np.int64), *seen])


def _seen_mask(found: np.ndarray, seen: list[np.ndarray], n_items: int) -> np.ndarray:
    """``(B, F)`` True where ``found[b, f]`` is one of row b's seen items (one vectorised ``isin``)."""
    rows = np.arange(len(found), dtype=np.int64)
    found_keys = np.where(found >= 0, rows[:, None] * n_items + found, -1)  # (B, F) one key per (row, item)
    seen_rows, seen_items = _seen_pairs(seen, n_items)  # ids outside the index cannot be found anyway
    return np.isin(found_keys, seen_rows * n_items + seen_items)

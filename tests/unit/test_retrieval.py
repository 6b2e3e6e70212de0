"""Generative retrieval (tokenrec/serving/retrieval.py): R8 of RELIABILITY.md, exact and deterministic top-K."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenrec.config import RetrievalConfig
from tokenrec.serving.retrieval import ItemIndex, normalize_rows

pytestmark = pytest.mark.unit


def brute_force_topk(items: np.ndarray, queries: np.ndarray, k: int, seen: list[np.ndarray]):
    """The obvious reference: all scores, seen items removed, (score desc, id asc), padded with -1/-inf."""
    v = normalize_rows(items).astype(np.float64)
    q = normalize_rows(queries).astype(np.float64)
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), -1, dtype=np.int64)
    for u in range(len(q)):
        s = (v @ q[u]).astype(np.float32)
        allowed = np.setdiff1d(np.arange(len(v)), seen[u])
        order = allowed[np.lexsort((allowed, -s[allowed]))][:k]
        scores[u, : len(order)] = s[order]
        ids[u, : len(order)] = order
    return scores, ids


def tied_catalog(seed: int = 0, n_items: int = 600, dim: int = 16):
    """Random items with groups of exact duplicates (exact score ties), and queries aimed at those groups."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    items[[7, 90, 91, 300, 301, 302, 450, 451, 452, 453, 599]] = items[7]  # 11 copies: a tie across the cut
    items[[20, 21, 500]] = items[20]
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    queries[:5] = items[7] + 0.01 * rng.standard_normal((5, dim)).astype(np.float32)  # top = the 11 copies
    queries[5] = items[20]
    queries[6] = 0.0  # a zero query: every item ties at score 0
    seen = [rng.choice(n_items, size=rng.integers(0, 40), replace=False) for _ in range(len(queries))]
    seen[0] = np.zeros(0, dtype=np.int64)  # nothing seen
    seen[1] = np.array([90, 301, 599])  # part of the tie group is seen
    seen[2] = np.setdiff1d(np.arange(n_items), [3, 7, 450, 12])  # almost everything seen: fewer than k left
    seen[3] = rng.choice(n_items, size=400, replace=False)  # a heavy user
    return items, queries, seen


@pytest.mark.parametrize("k", [1, 5, 20])
def test_flat_index_equals_brute_force_including_tie_order(k):
    items, queries, seen = tied_catalog()
    index = ItemIndex.build(items, RetrievalConfig(batch_size=16))
    scores, ids = index.search(queries, k, exclude=seen)
    ref_scores, ref_ids = brute_force_topk(items, queries, k, seen)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_ties_are_ordered_by_item_id_and_seen_items_never_appear():
    items, queries, seen = tied_catalog()
    scores, ids = ItemIndex.build(items).search(queries, 5, exclude=seen)
    assert list(ids[0]) == [7, 90, 91, 300, 301]  # five of the eleven identical items, smallest ids first
    assert len(set(scores[0].tolist())) == 1
    assert list(ids[1]) == [7, 91, 300, 302, 450]  # 90, 301 and 599 are seen
    assert list(ids[6]) == sorted(set(range(20)) - set(seen[6].tolist()))[:5]  # zero query: all tie at 0
    for u, row in enumerate(ids):
        assert not set(row.tolist()) & set(seen[u].tolist())
        valid = row >= 0
        assert np.all(np.diff(scores[u][valid]) <= 0)


def test_a_user_with_fewer_unseen_items_than_k_gets_padding():
    items, queries, seen = tied_catalog()
    scores, ids = ItemIndex.build(items).search(queries, 6, exclude=seen)
    assert sorted(ids[2][:4].tolist()) == [3, 7, 12, 450]
    assert list(ids[2][4:]) == [-1, -1] and np.all(np.isneginf(scores[2][4:]))


def test_k_larger_than_the_catalog_returns_every_unseen_item_then_padding():
    rng = np.random.default_rng(5)
    items = rng.standard_normal((24, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    seen = [np.array([1, 2]), np.array([], dtype=np.int64), np.arange(24)]
    scores, ids = ItemIndex.build(items).search(queries, 30, exclude=seen)
    assert ids.shape == scores.shape == (3, 30)
    assert sorted(ids[0][:22].tolist()) == sorted(set(range(24)) - {1, 2}) and set(ids[0][22:]) == {-1}
    assert sorted(ids[1][:24].tolist()) == list(range(24)) and set(ids[1][24:]) == {-1}
    assert set(ids[2]) == {-1} and np.all(np.isneginf(scores[2]))
    assert np.all(np.diff(scores[1][:24]) <= 0)


def test_exclusion_is_exact_for_users_who_have_seen_many_items():
    rng = np.random.default_rng(3)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    queries = rng.standard_normal((12, 8)).astype(np.float32)
    # seen = each user's own current top 250: a plain top-(K + small) search would return only seen items
    full = normalize_rows(queries) @ normalize_rows(items).T
    seen = [np.argsort(-row)[:250] for row in full]
    _, ids = ItemIndex.build(items, RetrievalConfig(batch_size=5)).search(queries, 10, exclude=seen)
    _, ref_ids = brute_force_topk(items, queries, 10, seen)
    np.testing.assert_array_equal(ids, ref_ids)


def test_adding_new_items_equals_building_from_scratch():
    items, queries, seen = tied_catalog(seed=1)
    grown = ItemIndex.build(items[:450])
    new_ids = grown.add(items[450:])
    np.testing.assert_array_equal(new_ids, np.arange(450, len(items)))
    fresh = ItemIndex.build(items)
    for got, want in zip(grown.search(queries, 10, seen), fresh.search(queries, 10, seen), strict=True):
        np.testing.assert_array_equal(got, want)


def test_queries_and_items_are_compared_by_cosine():
    items = np.array([[10.0, 0.0], [0.6, 0.8], [0.0, -3.0]], dtype=np.float32)
    scores, ids = ItemIndex.build(items).search(np.array([[0.0, 5.0]], dtype=np.float32), 3)
    assert ids.tolist() == [[1, 0, 2]]
    np.testing.assert_allclose(scores[0], [0.8, 0.0, -1.0], atol=1e-6)


def test_raw_item_vectors_rank_by_cosine_times_item_norm_and_survive_save_and_load(tmp_path):
    items = np.array([[10.0, 0.0], [3.0, 4.0], [0.0, -3.0], [0.0, 1.0]], dtype=np.float32)
    index = ItemIndex.build(items, RetrievalConfig(normalize_items=False))
    scores, ids = index.search(np.array([[0.0, 5.0]], dtype=np.float32), 4)
    assert ids.tolist() == [[1, 3, 0, 2]]  # item 1 (cosine 0.8, norm 5) beats item 3 (cosine 1, norm 1)
    np.testing.assert_allclose(scores[0], [4.0, 1.0, 0.0, -3.0], atol=1e-6)
    index.save(tmp_path / "index")
    loaded = ItemIndex.load(tmp_path / "index")
    assert loaded.cfg.normalize_items is False
    new = loaded.add(np.array([[0.0, 6.0]], dtype=np.float32))  # a new item keeps its norm too
    assert loaded.search(np.array([[0.0, 1.0]], dtype=np.float32), 1)[1].tolist() == [[int(new[0])]]
    rng = np.random.default_rng(0)
    catalog, queries = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    want = np.argsort(-(normalize_rows(queries) @ catalog.T), axis=1, kind="stable")[:, :10]
    got = ItemIndex.build(catalog, RetrievalConfig(normalize_items=False)).search(queries, 10)[1]
    np.testing.assert_array_equal(got, want)


def test_ivf_probing_every_list_is_exact_and_hnsw_has_high_recall():
    items, queries, seen = tied_catalog(seed=2, n_items=2000)
    _, exact_ids = ItemIndex.build(items).search(queries, 10, seen)
    ivf = ItemIndex.build(items, RetrievalConfig(index="ivf", ivf_nlist=16, ivf_nprobe=16))
    _, ivf_ids = ivf.search(queries, 10, seen)
    np.testing.assert_array_equal(ivf_ids, exact_ids)
    hnsw = ItemIndex.build(items, RetrievalConfig(index="hnsw", hnsw_m=16))
    _, hnsw_ids = hnsw.search(queries, 10, seen)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_ids, exact_ids, strict=True)])
    assert recall >= 0.95
    for u, row in enumerate(hnsw_ids):
        assert not set(row.tolist()) & set(seen[u].tolist())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_and_load_give_the_same_results(tmp_path, kind):
    items, queries, seen = tied_catalog(seed=4)
    index = ItemIndex.build(items, RetrievalConfig(index=kind))
    index.save(tmp_path / "index")
    loaded = ItemIndex.load(tmp_path / "index")
    assert len(loaded) == len(items) and loaded.cfg.index == kind
    for got, want in zip(loaded.search(queries, 10, seen), index.search(queries, 10, seen), strict=True):
        np.testing.assert_array_equal(got, want)


def test_mismatched_dimensions_are_rejected():
    index = ItemIndex.build(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones((2, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match=r"must be \(n, 4\), got shape \(2, 5\)"):
        index.add(np.ones((2, 5), dtype=np.float32))


def test_a_tie_group_larger_than_the_fetch_is_searched_again():
    items, queries, _ = tied_catalog()
    index = ItemIndex.build(items)
    copies = [7, 90, 91, 300, 301, 302, 450, 451, 452, 453, 599]
    for k in range(1, 14):  # the first fetch (k + 8) ends inside the group of 11 equal scores for k <= 3
        _, ids = index.search(queries[:1], k)
        assert ids[0].tolist()[: min(k, 11)] == copies[: min(k, 11)]
        np.testing.assert_array_equal(ids, brute_force_topk(items, queries[:1], k, [np.zeros(0, int)])[1])


@pytest.mark.parametrize("k", [1, 3, 5, 20, 700])
def test_brute_force_on_a_torch_device_equals_the_faiss_path(k):
    """The GPU path (run here on the CPU device): same ids, same scores, same tie order, same padding."""
    items, queries, seen = tied_catalog()
    index = ItemIndex.build(items, RetrievalConfig(batch_size=16))
    scores, ids = index.search(queries, k, exclude=seen, device=torch.device("cpu"))
    ref_scores, ref_ids = index.search(queries, k, exclude=seen)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(ids, brute_force_topk(items, queries, k, seen)[1])
    _, no_exclusion = index.search(queries, k, device=torch.device("cpu"))
    np.testing.assert_array_equal(no_exclusion, index.search(queries, k)[1])

"""Fold-in of users and items new since training (tokenrec/serving/foldin.py), against a slow, obvious reference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from tokenrec.config import TokenizerConfig
from tokenrec.models.quantizer import disambiguate
from tokenrec.models.tokenizers import build_tokenizer
from tokenrec.serving.foldin import extend_codes, fold_in

pytestmark = pytest.mark.unit


def reference_fold_in(user_table, item_table, users, items, n_users, n_items):
    """Dict-and-loop version of the documented rule: rounds of degree-weighted neighbour means, rescaled."""
    n_known_users, n_known_items = len(user_table), len(item_table)
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    of_user, of_item = defaultdict(set), defaultdict(set)
    for u, i in pairs:
        of_user[u].add(i)
        of_item[i].add(u)
    user = {u: user_table[u].astype(np.float64) for u in range(n_known_users)}
    item = {i: item_table[i].astype(np.float64) for i in range(n_known_items)}
    todo_users = {u for u in of_user if u >= n_known_users}
    todo_items = {i for i in of_item if i >= n_known_items}
    new_users, new_items = sorted(todo_users), sorted(todo_items)

    def mean(neighbours, table, degree_of):
        ready = [n for n in neighbours if n in table]
        if not ready:
            return None
        weights = [1 / np.sqrt(len(degree_of[n])) for n in ready]
        return sum(w * table[n] for w, n in zip(weights, ready, strict=True)) / sum(weights)

    while True:
        got_items = {i: v for i in todo_items if (v := mean(of_item[i], user, of_user)) is not None}
        item.update(got_items)
        todo_items -= set(got_items)
        got_users = {u: v for u in todo_users if (v := mean(of_user[u], item, of_item)) is not None}
        user.update(got_users)
        todo_users -= set(got_users)
        if not got_items and not got_users:
            break
    for u in todo_users:
        user[u] = user_table.mean(axis=0)
    for i in todo_items:
        item[i] = item_table.mean(axis=0)
    out_user, out_item = np.zeros((n_users, user_table.shape[1])), np.zeros((n_items, item_table.shape[1]))
    for table, out, new, trained in (
        (user, out_user, new_users, user_table),
        (item, out_item, new_items, item_table),
    ):
        median = np.median(np.linalg.norm(trained, axis=1))
        for key, value in table.items():
            out[key] = value * (median / np.linalg.norm(value) if key in new else 1.0)
    return out_user, out_item, new_users, new_items, len(todo_users), len(todo_items)


def test_a_new_item_is_the_degree_weighted_mean_of_its_users_at_the_trained_scale():
    users_table = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    items_table = np.array([[1.0, 1.0]], dtype=np.float32)
    # user 0 has 1 interaction (only the new item 1), user 1 has 4 (item 0 three times counts once: 2 items)
    users = np.array([0, 1, 1, 1, 1])
    items = np.array([1, 1, 0, 0, 0])
    result = fold_in(users_table, items_table, users, items, n_users=3, n_items=2)
    # weights |N(u)|^-1/2: user 0 -> 1, user 1 -> 1/sqrt(2)
    direction = (users_table[0] + users_table[1] / np.sqrt(2)) / (1 + 1 / np.sqrt(2))
    median = np.median(np.linalg.norm(items_table, axis=1))
    np.testing.assert_allclose(result.item[1], direction / np.linalg.norm(direction) * median, rtol=1e-6)
    np.testing.assert_array_equal(result.item[0], items_table[0])  # trained rows stay frozen
    np.testing.assert_array_equal(result.user, users_table)
    assert result.new_items.tolist() == [1] and result.new_users.tolist() == []


def test_fold_in_equals_the_reference_on_a_random_graph_with_chains_and_a_cold_island():
    rng = np.random.default_rng(0)
    n_known_users, n_known_items, n_users, n_items, dim = 30, 20, 40, 28, 6
    users_table = rng.normal(size=(n_known_users, dim)).astype(np.float32)
    items_table = rng.normal(size=(n_known_items, dim)).astype(np.float32)
    edges = [(int(rng.integers(n_known_users)), int(rng.integers(n_known_items))) for _ in range(150)]
    edges += [(int(rng.integers(n_known_users)), int(i)) for i in range(20, 24)]  # new items, known users
    edges += [(u, int(rng.integers(20, 24))) for u in range(30, 34)]  # new users on new items: round 2
    edges += [(u, int(rng.integers(n_known_items))) for u in range(34, 36)]  # new users, known items
    edges += [(36, 24), (37, 24), (37, 25)]  # a new item reached only through new users (round 3)
    edges += [(30, 24)]
    edges += [(38, 26), (39, 26), (39, 27)]  # an island of new nodes: cold
    users, items = (np.array(column) for column in zip(*edges, strict=True))
    result = fold_in(users_table, items_table, users, items, n_users, n_items)
    ref_user, ref_item, new_users, new_items, cold_users, cold_items = reference_fold_in(
        users_table, items_table, users, items, n_users, n_items
    )
    np.testing.assert_allclose(result.user, ref_user, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.item, ref_item, rtol=1e-5, atol=1e-6)
    assert result.new_users.tolist() == new_users and result.new_items.tolist() == new_items
    assert (result.stats["cold_users"], result.stats["cold_items"]) == (cold_users, cold_items) == (2, 2)
    assert result.stats["rounds"] >= 2


def test_an_index_without_interactions_keeps_a_zero_row_and_is_not_folded_in():
    table = np.ones((2, 3), dtype=np.float32)
    result = fold_in(table, table, np.array([0, 2]), np.array([0, 1]), n_users=4, n_items=3)
    assert result.new_users.tolist() == [2] and result.new_items.tolist() == []
    np.testing.assert_array_equal(result.user[3], 0.0)
    np.testing.assert_array_equal(result.item[2], 0.0)
    with pytest.raises(ValueError, match="ID maps only grow"):
        fold_in(table, table, np.array([0]), np.array([0]), n_users=1, n_items=2)


def test_new_tokens_come_from_the_trained_tokenizer_and_take_the_next_free_disambiguation_number():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(
        TokenizerConfig(codebooks=2, codebook_size=3, code_dim=4, hidden_dim=8), 5
    ).eval()
    vectors = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    trained = tokenizer.encode(torch.from_numpy(vectors[:8])).numpy()
    new_rows = np.array([8, 9, 10])  # row 11: no interaction, no token
    plain = extend_codes(trained, tokenizer, vectors, new_rows, vocab_size=3)
    np.testing.assert_array_equal(plain[:8], trained)
    np.testing.assert_array_equal(plain[new_rows], tokenizer.encode(torch.from_numpy(vectors[8:11])).numpy())
    np.testing.assert_array_equal(plain[11], 0)

    numbered = disambiguate(torch.from_numpy(trained)).numpy()  # (8, 3)
    extended = extend_codes(numbered, tokenizer, vectors, new_rows, vocab_size=100)
    np.testing.assert_array_equal(extended[:8], numbered)
    np.testing.assert_array_equal(extended[new_rows, :2], plain[new_rows])
    whole = extended[:11]  # every (tuple, number) is unique, numbers count up inside each tuple
    assert len({tuple(r) for r in whole.tolist()}) == 11
    for row in new_rows:
        same = [r for r in range(row) if (extended[r, :2] == extended[row, :2]).all()]
        assert extended[row, 2] == len(same)

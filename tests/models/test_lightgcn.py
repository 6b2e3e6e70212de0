"""LightGCN: the normalised graph, sparse propagation and its gradient against dense formulas, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenrec.config import GnnConfig, TrainConfig
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_split
from tokenrec.models.lightgcn import GraphOperator, LightGCN, normalized_adjacency
from tokenrec.models.mostpop import MostPopular
from tokenrec.training.gnn import NegativeSampler, bpr_loss, train_bpr

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


def dense_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 written out with a dense matrix and a Python loop."""
    n = n_users + n_items
    adj = torch.zeros(n, n, dtype=torch.float64)
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        adj[u, n_users + i] = adj[n_users + i, u] = 1.0
    degree = adj.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


def dense_propagation(ego: torch.Tensor, adjacency: torch.Tensor, layers: int) -> torch.Tensor:
    """mean over l = 0..L of A_hat^l E_0."""
    total, current = ego, ego
    for _ in range(layers):
        current = adjacency @ current
        total = total + current
    return total / (layers + 1)


def random_graph(seed: int = 0, n_users: int = 30, n_items: int = 20, edges: int = 120):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_users, edges), rng.integers(0, n_items, edges), n_users, n_items


def test_normalized_adjacency_by_hand() -> None:
    # user 0 - items 0, 1 (item 1 twice); user 1 - item 1; user 2 isolated; item 2 isolated
    users, items = np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1])
    got = normalized_adjacency(users, items, 3, 3).toarray()
    expected = np.zeros((6, 6), dtype=np.float32)
    # degrees: user0 2, user1 1, item0 1, item1 2
    expected[0, 3] = expected[3, 0] = 1 / np.sqrt(2 * 1)
    expected[0, 4] = expected[4, 0] = 1 / np.sqrt(2 * 2)
    expected[1, 4] = expected[4, 1] = 1 / np.sqrt(1 * 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_sparse_propagation_matches_the_dense_formula(layers: int) -> None:
    users, items, n_users, n_items = random_graph()
    model = LightGCN(n_users, n_items, 8, layers, normalized_adjacency(users, items, n_users, n_items))
    dense = dense_adjacency(users, items, n_users, n_items)
    expected = dense_propagation(model.ego.detach().double(), dense, layers).float()
    user, item = model.propagate()
    torch.testing.assert_close(torch.cat([user, item]), expected, rtol=1e-5, atol=1e-6)
    # the batch path (rows only) gives the same rows
    batch_users, batch_pos, batch_neg = (
        torch.tensor([3, 3, 7]),
        torch.tensor([0, 5, 19]),
        torch.tensor([2, 2, 11]),
    )
    emb = model(batch_users, batch_pos, batch_neg)
    torch.testing.assert_close(emb.user, expected[batch_users], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb.neg, expected[n_users + batch_neg], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb.pos_ego, model.ego.detach()[n_users + batch_pos])


@pytest.mark.parametrize("layers", [1, 3])
def test_gradient_matches_dense_autograd(layers: int) -> None:
    users, items, n_users, n_items = random_graph(seed=1)
    model = LightGCN(n_users, n_items, 8, layers, normalized_adjacency(users, items, n_users, n_items))
    batch = torch.tensor([0, 4, 4, 29]), torch.tensor([1, 1, 7, 19]), torch.tensor([3, 8, 7, 0])
    ranking, reg = bpr_loss(model, *batch, l2=0.1)
    (ranking + reg).backward()

    ego = model.ego.detach().double().requires_grad_()
    final = dense_propagation(ego, dense_adjacency(users, items, n_users, n_items), layers)
    u, p, n = final[batch[0]], final[n_users + batch[1]], final[n_users + batch[2]]
    reference = torch.nn.functional.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()
    ego_rows = [ego[batch[0]], ego[n_users + batch[1]], ego[n_users + batch[2]]]
    reference = reference + 0.1 * 0.5 * sum(e.pow(2).sum() for e in ego_rows) / 4
    reference.backward()
    torch.testing.assert_close(model.ego.grad.double(), ego.grad, rtol=1e-4, atol=1e-6)


def test_threaded_products_are_bit_identical() -> None:
    users, items, n_users, n_items = random_graph(seed=2, n_users=300, n_items=200, edges=3000)
    matrix = normalized_adjacency(users, items, n_users, n_items)
    x = torch.randn(500, 16)
    single = GraphOperator(matrix, threads=1).matmul(x)
    assert torch.equal(GraphOperator(matrix, threads=3).matmul(x), single)


def test_lightgcn_learns_the_clusters_and_beats_most_popular(walks: InteractionData) -> None:
    users, items = walks.train_pairs
    graph = normalized_adjacency(users, items, walks.n_users, walks.n_items)
    model = LightGCN(walks.n_users, walks.n_items, 32, 3, graph)
    settings = GnnConfig(dim=32, lr=0.01, batch_size=256, max_epochs=30, eval_every=10, patience=30)
    result = train_bpr(model, walks, settings, TrainConfig(progress=False), name="test")
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_epoch in (10, 20, 30)
    lightgcn = evaluate_split(walks, EmbeddingRanker(*model.propagate()), walks.VALID)
    assert lightgcn == pytest.approx(result.best_valid)  # the model holds the selected weights
    popular = evaluate_split(walks, MostPopular(walks.item_popularity()), walks.VALID)
    assert lightgcn["NDCG@20"] > popular["NDCG@20"] + 0.1
    assert lightgcn["HR@20"] > 0.5


def test_user_sampling_draws_training_pairs_with_users_uniform() -> None:
    # user 0 has 8 items, users 1 and 3 one each, user 2 none: every active user is drawn about equally often
    users = np.array([0] * 8 + [1, 3])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 7, 2, 9])
    sampler = NegativeSampler(users, items, n_items=10)
    pair_users, pair_items = sampler.sample_pairs(30_000, np.random.default_rng(0))
    assert set(zip(pair_users.tolist(), pair_items.tolist(), strict=True)) == set(
        zip(users.tolist(), items.tolist(), strict=True)
    )
    shares = np.bincount(pair_users, minlength=4) / len(pair_users)
    np.testing.assert_allclose(shares, [1 / 3, 1 / 3, 0.0, 1 / 3], atol=0.02)
    user0_items = np.bincount(pair_items[pair_users == 0], minlength=10)[:8]
    assert user0_items.min() > 0.8 * user0_items.max()  # and its items about equally often


def test_lightgcn_learns_with_edge_sampling_too(walks: InteractionData) -> None:
    users, items = walks.train_pairs
    graph = normalized_adjacency(users, items, walks.n_users, walks.n_items)
    model = LightGCN(walks.n_users, walks.n_items, 32, 3, graph)
    settings = GnnConfig(
        dim=32, lr=0.01, batch_size=256, max_epochs=20, eval_every=20, patience=20, sampling="edge"
    )
    result = train_bpr(model, walks, settings, TrainConfig(progress=False), name="edge-sampled")
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    popular = evaluate_split(walks, MostPopular(walks.item_popularity()), walks.VALID)
    assert result.best_valid["NDCG@20"] > popular["NDCG@20"] + 0.1


def test_approximate_mode_is_exact_forward_after_refresh_and_learns(walks: InteractionData) -> None:
    users, items, n_users, n_items = random_graph(seed=3)
    graph = normalized_adjacency(users, items, n_users, n_items)
    exact = LightGCN(n_users, n_items, 8, 3, graph)
    cached = LightGCN(n_users, n_items, 8, 3, graph, refresh_every=4)
    cached.load_state_dict(exact.state_dict())
    batch = torch.tensor([0, 4, 9]), torch.tensor([1, 2, 7]), torch.tensor([3, 8, 0])
    cached.refresh()
    torch.testing.assert_close(cached(*batch).user, exact(*batch).user)
    # layers 0 and 1 keep their exact gradient: with L = 1 the cached mode is the exact model
    one_exact = LightGCN(n_users, n_items, 8, 1, graph)
    one_cached = LightGCN(n_users, n_items, 8, 1, graph, refresh_every=4)
    one_cached.load_state_dict(one_exact.state_dict())
    for model in (one_exact, one_cached):
        sum(bpr_loss(model, *batch, l2=0.1)).backward()
    torch.testing.assert_close(one_cached.ego.grad, one_exact.ego.grad)

    users, items = walks.train_pairs
    graph = normalized_adjacency(users, items, walks.n_users, walks.n_items)
    model = LightGCN(walks.n_users, walks.n_items, 32, 3, graph, refresh_every=4)
    settings = GnnConfig(dim=32, lr=0.01, batch_size=256, max_epochs=30, eval_every=30, patience=30)
    train_bpr(model, walks, settings, TrainConfig(progress=False), name="cached")
    popular = evaluate_split(walks, MostPopular(walks.item_popularity()), walks.VALID)
    assert (
        evaluate_split(walks, EmbeddingRanker(*model.propagate()), walks.VALID)["NDCG@20"]
        > popular["NDCG@20"] + 0.1
    )


def test_dense_batches_take_the_full_product_path_with_the_same_gradient() -> None:
    users, items, n_users, n_items = random_graph(seed=4, n_users=6, n_items=5, edges=20)
    model = LightGCN(n_users, n_items, 4, 2, normalized_adjacency(users, items, n_users, n_items))
    batch = torch.arange(6), torch.arange(6) % 5, (torch.arange(6) + 2) % 5  # covers every node
    sum(bpr_loss(model, *batch, l2=0.1)).backward()
    ego = model.ego.detach().double().requires_grad_()
    final = dense_propagation(ego, dense_adjacency(users, items, n_users, n_items), 2)
    u, p, n = final[batch[0]], final[n_users + batch[1]], final[n_users + batch[2]]
    reference = torch.nn.functional.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()
    rows = [ego[batch[0]], ego[n_users + batch[1]], ego[n_users + batch[2]]]
    (reference + 0.1 * 0.5 * sum(e.pow(2).sum() for e in rows) / 6).backward()
    torch.testing.assert_close(model.ego.grad.double(), ego.grad, rtol=1e-4, atol=1e-6)

"""Shared VQ helpers, statistics, config validation and the ablation tokenizers behind one interface."""

from __future__ import annotations

import math

import pytest
import torch

from tokenrec.config import TokenizerConfig
from tokenrec.errors import ConfigError
from tokenrec.models.kmeans_tokenizer import KMeansTokenizer
from tokenrec.models.quantizer import (
    code_stats,
    disambiguate,
    kmeans,
    nearest_codeword,
    perplexity,
    reseed_codewords,
)
from tokenrec.models.rqvae import RQVAE
from tokenrec.models.tokenizers import build_tokenizer

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


KINDS = ("mq", "single", "vqvae", "rqvae", "kmeans")


def blobs(
    n: int, dim: int, centres: int, spread: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g) * 3
    x = means[torch.arange(n) % centres] + spread * torch.randn(n, dim, generator=g)
    return x, means


# ----------------------------------------------------------------------------------------- helpers


def test_nearest_codeword_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 3, 8, generator=g)  # (B, K, d)
    books = torch.randn(3, 20, 8, generator=g)  # (K, L, d)
    got = nearest_codeword(z, books)
    assert got.shape == (300, 3) and got.dtype == torch.int64
    for level in range(3):
        dist = torch.cdist(z[:, level].double(), books[level].double())  # (B, L)
        expected = dist.argmin(-1)
        chosen = dist.gather(1, got[:, level : level + 1]).squeeze(1)
        best = dist.gather(1, expected.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(chosen, best, rtol=0, atol=1e-9 + 1e-6 * float(best.max()))


def test_nearest_codeword_shared_book_and_ties_go_to_lowest_index() -> None:
    book = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # codewords 1 and 2 coincide
    z = torch.tensor([[[0.9, 0.0], [0.1, 0.0]]])  # (1, 2, 2)
    codes = nearest_codeword(z, book.unsqueeze(0).expand(2, -1, -1))
    assert codes.tolist() == [[1, 0]]


def test_kmeans_recovers_separated_centres_and_is_deterministic() -> None:
    x, means = blobs(400, 4, centres=8)
    centroids = kmeans(x, 8, torch.Generator().manual_seed(0))
    assert centroids.shape == (8, 4)
    # every true centre has a centroid within the noise scale
    assert float(torch.cdist(means, centroids).min(dim=1).values.max()) < 0.1
    again = kmeans(x, 8, torch.Generator().manual_seed(0))
    assert torch.equal(centroids, again)


def test_kmeans_with_fewer_points_than_clusters_returns_all_clusters() -> None:
    x = torch.randn(5, 3)
    centroids = kmeans(x, 16, torch.Generator().manual_seed(0))
    assert centroids.shape == (16, 3)
    assert torch.isfinite(centroids).all()


def test_reseed_codewords_moves_only_dead_rows_onto_candidates() -> None:
    book = torch.zeros(6, 2)
    dead = torch.tensor([False, True, False, False, True, False])
    candidates = torch.arange(20.0).view(10, 2)
    moved = reseed_codewords(book, dead, candidates, torch.Generator().manual_seed(0))
    assert moved == 2
    assert book[~dead].abs().sum() == 0
    for row in book[dead]:
        assert (candidates == row).all(dim=1).any()


def test_code_stats_hand_computed() -> None:
    codes = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 3]])  # L = 4
    stats = code_stats(codes, codebook_size=4)
    assert stats["used_codes"] == [3, 2]
    assert stats["usage"] == [0.75, 0.5]
    # level 1: p = (2, 1, 1) / 4 -> H = 1.5 ln 2; level 2: p = (3, 1) / 4
    assert stats["perplexity"][0] == pytest.approx(2**1.5)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert stats["perplexity"][1] == pytest.approx(math.exp(h2))
    assert stats["unique_tuples"] == 3
    assert stats["colliding_entities"] == 2
    assert stats["collision_rate"] == 0.5
    assert stats["max_bucket"] == 2


def test_perplexity_limits() -> None:
    assert perplexity(torch.ones(256)) == pytest.approx(256.0)
    assert perplexity(torch.tensor([0, 7, 0])) == pytest.approx(1.0)
    assert perplexity(torch.zeros(4)) == 0.0


def test_disambiguate_makes_tuples_unique_and_keeps_the_k_codes() -> None:
    codes = torch.tensor([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    out = disambiguate(codes)
    assert out.shape == (6, 3)
    assert torch.equal(out[:, :2], codes)
    assert out[:, 2].tolist() == [0, 1, 0, 2, 1, 0]  # numbered in index order inside each group
    assert code_stats(out, 4)["colliding_entities"] == 0


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "pq"},
        {"codebooks": 0},
        {"codebook_size": 1},
        {"mask_prob": 1.0},
        {"mask_prob": -0.1},
        {"beta": -1.0},
        {"reseed_until": 1.5},
    ],
)
def test_tokenizer_config_rejects_invalid_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TokenizerConfig(**bad)


# ----------------------------------------------------------------------------------------- kinds


def small_cfg(kind: str, **overrides) -> TokenizerConfig:
    return TokenizerConfig(kind=kind, codebooks=3, codebook_size=16, code_dim=8, hidden_dim=32, **overrides)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_the_same_interface(kind: str) -> None:
    torch.manual_seed(0)
    x, _ = blobs(200, 12, centres=20, spread=0.3)
    model = build_tokenizer(small_cfg(kind), input_dim=12)
    assert model.kind == kind
    model.init_codebooks(x, torch.Generator().manual_seed(0))
    levels = 1 if kind == "single" else 3
    codes = model.encode(x)
    assert codes.shape == (200, levels) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    recon = model.reconstruct(x)
    assert recon.shape == x.shape
    torch.testing.assert_close(model.decode_codes(codes), recon)
    out = model(x[:32])
    assert out.codes.shape == (32, levels) and out.recon.shape == (32, 12) and out.loss.ndim == 0
    assert model.describe()["num_levels"] == levels


@pytest.mark.parametrize("kind", ["mq", "single", "vqvae", "rqvae"])
def test_trainable_kinds_reduce_reconstruction_error(kind: str) -> None:
    torch.manual_seed(0)
    x, _ = blobs(256, 12, centres=16, spread=0.3)  # 16 codes per book can name every blob
    model = build_tokenizer(small_cfg(kind), input_dim=12)
    model.init_codebooks(x, torch.Generator().manual_seed(0))
    before = float(((model.reconstruct(x) - x) ** 2).mean())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        out = model(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = float(((model.reconstruct(x) - x) ** 2).mean())
    assert after < 0.5 * before


def test_vqvae_levels_share_one_codebook() -> None:
    model = build_tokenizer(small_cfg("vqvae"), input_dim=12)
    assert model.codebooks.shape == (1, 16, 8)
    assert model.level_book == (0, 0, 0)


def test_rqvae_quantizes_residuals_like_a_slow_reference() -> None:
    torch.manual_seed(0)
    model = RQVAE(input_dim=6, num_levels=3, codebook_size=5, code_dim=4, hidden_dim=16)
    x = torch.randn(40, 6)
    inputs, codes = model.quantize_eval(x)
    z = model.encoder(x)
    for i in range(40):
        residual = z[i]
        for level in range(3):
            torch.testing.assert_close(inputs[i, level], residual)
            dists = ((model.codebooks[level] - residual) ** 2).sum(-1)
            assert int(codes[i, level]) == int(dists.argmin())
            residual = residual - model.codebooks[level, int(codes[i, level])]


def test_kmeans_tokenizer_error_falls_with_every_residual_level() -> None:
    x, _ = blobs(300, 8, centres=40, spread=0.5)
    errors = []
    for levels in (1, 2, 3):
        model = KMeansTokenizer(input_dim=8, num_levels=levels, codebook_size=8)
        model.init_codebooks(x, torch.Generator().manual_seed(0))
        errors.append(float(((model.reconstruct(x) - x) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert not any(p.requires_grad for p in model.parameters())

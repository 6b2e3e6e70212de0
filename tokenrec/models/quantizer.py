"""The interface every ID tokenizer implements and the vector-quantization pieces they share.

A tokenizer maps an entity's collaborative embedding ``x`` (a LightGCN row, PAPER.md section 2) to ``K``
discrete codes, one per *level*, and back to a reconstruction of ``x``. The concrete tokenizers (the
MQ-Tokenizer of TokenRec and the ablations of the paper's Table VI) each live in their own module and import
this one; :mod:`tokenrec.models.tokenizers` builds the one ``cfg.tokenizer.kind`` names.

Every tokenizer keeps its codewords in one parameter ``codebooks`` of shape ``(n_books, L, d_c)`` and says
which book each level reads (``level_book``), so k-means initialisation, dead-code re-seeding, the training
loss (:func:`vq_output`) and the statistics are written once, here.

Pure model code: no file I/O.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

_CHUNK = 65536  # rows per distance computation; bounds memory at _CHUNK * L floats


@dataclass
class TokenizerOutput:
    """One training forward pass. Losses are means over the batch of per-entity sums (PAPER.md eq. 4)."""

    recon: Tensor  # (B, D) reconstruction r
    codes: Tensor  # (B, K) int64 tokens w^1..w^K
    loss: Tensor  # () recon_loss + codebook_loss + beta * commit_loss
    recon_loss: Tensor  # () ||x - r||^2
    codebook_loss: Tensor  # () sum_k ||sg[a^k] - c^k||^2
    commit_loss: Tensor  # () sum_k ||a^k - sg[c^k]||^2 (unweighted)


class Tokenizer(nn.Module, abc.ABC):
    """Base class: codebooks, encode/reconstruct, k-means initialisation and dead-code re-seeding.

    Subclasses implement :meth:`forward` (training pass, with masking where the method has it),
    :meth:`quantize_eval` (deterministic latents and codes, no masking) and :meth:`decode_codes`.

    Args:
        input_dim: D, the size of the embeddings being tokenized.
        num_levels: K, the number of codes per entity.
        codebook_size: L, codewords per book.
        code_dim: d_c, the size of a codeword.
        level_book: for each level, the index of the book it quantizes with (its length is K).
    """

    kind: str = ""
    trainable: bool = True  # False: codebooks come from k-means alone (no gradient steps)
    residual: bool = False  # True: a level's input depends on the codes of the levels before it

    def __init__(
        self, input_dim: int, num_levels: int, codebook_size: int, code_dim: int, level_book: Sequence[int]
    ) -> None:
        super().__init__()
        if len(level_book) != num_levels:
            raise ValueError(f"level_book needs one entry per level ({num_levels}), got {list(level_book)}")
        self.input_dim = input_dim
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.level_book = tuple(int(b) for b in level_book)
        n_books = max(self.level_book) + 1
        bound = 1.0 / codebook_size  # the usual VQ-VAE init; k-means replaces it before training
        self.codebooks = nn.Parameter(torch.empty(n_books, codebook_size, code_dim).uniform_(-bound, bound))

    # ------------------------------------------------------------------------------- subclass contract
    @abc.abstractmethod
    def forward(self, x: Tensor) -> TokenizerOutput:
        """Training pass on a batch ``x`` (B, D): masking (if any), quantization with straight-through, losses."""

    @abc.abstractmethod
    def quantize_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Without masking: the vectors each level quantizes (B, K, d_c) and their codes (B, K) int64."""

    @abc.abstractmethod
    def decode_codes(self, codes: Tensor) -> Tensor:
        """Reconstruction (B, D) from codes (B, K) alone."""

    def latents(self, x: Tensor) -> Tensor:
        """Without masking, the vectors each level quantizes, (B, K, d_c).

        Residual quantizers need the codes of earlier levels for this; parallel ones override it to skip
        the code search.
        """
        return self.quantize_eval(x)[0]

    # ------------------------------------------------------------------------------------ shared logic

    def lookup(self, codes: Tensor) -> Tensor:
        """Codewords of ``codes`` (B, K) -> (B, K, d_c)."""
        books = torch.as_tensor(self.level_book, device=codes.device)  # (K,)
        return self.codebooks[books.unsqueeze(0), codes]  # (B, K, d_c)

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = _CHUNK) -> Tensor:
        """Tokens of every row of ``x`` (N, D) -> (N, K) int64, without masking, in eval mode."""
        with _eval_mode(self):
            parts = [self.quantize_eval(chunk)[1] for chunk in x.split(batch_size)]
        return torch.cat(parts) if parts else x.new_zeros((0, self.num_levels), dtype=torch.long)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, batch_size: int = _CHUNK) -> Tensor:
        """Reconstruction (N, D) of ``x`` through its tokens, without masking."""
        with _eval_mode(self):
            parts = [self.decode_codes(self.quantize_eval(chunk)[1]) for chunk in x.split(batch_size)]
        return torch.cat(parts) if parts else x.new_zeros((0, self.input_dim))

    @torch.no_grad()
    def level_inputs(self, x: Tensor, batch_size: int = _CHUNK) -> Tensor:
        """:meth:`latents` of every row of ``x`` (N, D) -> (N, K, d_c), in eval mode."""
        with _eval_mode(self):
            return torch.cat([self.latents(chunk) for chunk in x.split(batch_size)])

    def book_points(self, inputs: Tensor, book: int) -> Tensor:
        """The vectors book ``book`` quantizes, out of level inputs (N, K, d_c) -> (N * its levels, d_c)."""
        levels = [k for k, b in enumerate(self.level_book) if b == book]
        return inputs[:, levels].reshape(-1, self.code_dim)

    @torch.no_grad()
    def init_codebooks(self, x: Tensor, generator: torch.Generator, iters: int = 25) -> None:
        """k-means initialisation of every book on the vectors it quantizes (encoder outputs of ``x``).

        Books are set in order; a residual quantizer recomputes its inputs after each, so that every level
        is clustered on the residuals the levels before it leave.
        """
        inputs = None
        for book in range(self.codebooks.shape[0]):
            if inputs is None or self.residual:
                inputs = self.level_inputs(x)  # (N, K, d_c)
            points = self.book_points(inputs, book)
            self.codebooks.data[book] = kmeans(points, self.codebook_size, generator, iters=iters)

    @torch.no_grad()
    def reseed_dead_codes(self, x: Tensor, level_counts: Tensor, generator: torch.Generator) -> int:
        """Move codewords that no entity chose onto random current latents (dead-code re-seeding).

        Args:
            x: inputs to draw latents from (a random subset is enough).
            level_counts: (K, L) how often each level chose each codeword since the last call
                (:meth:`code_counts`); a shared book is dead where all its levels together never chose it.
            generator: CPU generator for the choice of latents.

        Returns:
            The number of codewords moved.
        """
        inputs = None
        moved = 0
        for book in range(self.codebooks.shape[0]):
            levels = [k for k, b in enumerate(self.level_book) if b == book]
            dead = level_counts[levels].sum(0) == 0  # (L,)
            if bool(dead.any()):
                inputs = self.level_inputs(x) if inputs is None else inputs  # (N, K, d_c)
                points = self.book_points(inputs, book)
                moved += reseed_codewords(self.codebooks.data[book], dead, points, generator)
        return moved

    def code_counts(self, codes: Tensor) -> Tensor:
        """How often each level chose each codeword in ``codes`` (B, K) -> (K, L) int64."""
        return torch.stack(
            [torch.bincount(codes[:, k], minlength=self.codebook_size) for k in range(self.num_levels)]
        )

    def describe(self) -> dict[str, Any]:
        """What is needed to rebuild this module (besides its weights)."""
        return {
            "kind": self.kind,
            "input_dim": self.input_dim,
            "num_levels": self.num_levels,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
            "level_book": list(self.level_book),
        }


class _eval_mode:
    """Context manager: eval mode inside, the previous mode restored after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


# ------------------------------------------------------------------------------------- VQ helpers


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The two-layer perceptron used for every encoder and decoder of the tokenizers."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def vq_output(
    x: Tensor, recon: Tensor, codes: Tensor, inputs: Tensor, codewords: Tensor, beta: float
) -> TokenizerOutput:
    """The training pass's losses (PAPER.md eq. 4): reconstruction + codebook + ``beta`` * commitment.

    ``||x - r||^2 + sum_k ||sg[a^k] - c^k||^2 + beta * sum_k ||a^k - sg[c^k]||^2``, means over the batch of
    per-entity sums: the codebook term moves the codewords towards the vectors they quantize, the commitment
    term the encoder towards its codewords.

    Args:
        x: (B, D) the batch.
        recon: (B, D) its reconstruction.
        codes: (B, K) the codes chosen.
        inputs: (B, K, d_c) the vector each level quantized, a^k (an encoder output or a residual).
        codewords: (B, K, d_c) the codewords chosen, c^k, differentiable with respect to the codebooks.
        beta: weight of the commitment term.
    """
    recon_loss = ((x - recon) ** 2).sum(-1).mean()
    codebook_loss = ((inputs.detach() - codewords) ** 2).sum((-1, -2)).mean()
    commit_loss = ((inputs - codewords.detach()) ** 2).sum((-1, -2)).mean()
    loss = recon_loss + codebook_loss + beta * commit_loss
    return TokenizerOutput(recon, codes, loss, recon_loss, codebook_loss, commit_loss)


def nearest_codeword(z: Tensor, codebooks: Tensor) -> Tensor:
    """Index of the nearest codeword (squared Euclidean) per level; ties go to the lowest index.

    Args:
        z: vectors to quantize, (B, K, d).
        codebooks: one book per level, (K, L, d) (pass an ``expand``-ed view to share one book).

    Returns:
        (B, K) int64 indices into each level's book.
    """
    z = z.detach()
    codebooks = codebooks.detach()
    book_sq = (codebooks * codebooks).sum(-1)  # (K, L)
    out = []
    for chunk in z.split(_CHUNK):
        # ||z||^2 is the same for every codeword of a level, so argmin needs only -2 z.c + ||c||^2
        scores = book_sq.unsqueeze(0) - 2.0 * torch.einsum("bkd,kld->bkl", chunk, codebooks)  # (b, K, L)
        out.append(scores.argmin(-1))
    return torch.cat(out) if out else z.new_zeros(z.shape[:2], dtype=torch.long)


def kmeans(points: Tensor, n_clusters: int, generator: torch.Generator, iters: int = 25) -> Tensor:
    """Lloyd's k-means with k-means++ seeding; returns (n_clusters, d) centroids.

    With fewer distinct points than clusters, the spare centroids are copies of random points (they are dead
    codes and will be re-seeded in training). Empty clusters are moved onto random points.
    """
    n, dim = points.shape
    if n == 0:
        raise ValueError("k-means needs at least one point")
    centroids = _kmeans_plus_plus(points, n_clusters, generator)
    for _ in range(iters):
        assign = nearest_codeword(points.unsqueeze(1), centroids.unsqueeze(0)).squeeze(1)  # (N,)
        counts = torch.bincount(assign, minlength=n_clusters)  # (L,)
        sums = torch.zeros(n_clusters, dim, dtype=points.dtype, device=points.device).index_add_(
            0, assign, points
        )
        filled = counts > 0
        new = torch.where(
            filled.unsqueeze(1), sums / counts.clamp(min=1).unsqueeze(1).to(points.dtype), centroids
        )
        if not bool(filled.all()):
            reseed_codewords(new, ~filled, points, generator)
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def _kmeans_plus_plus(points: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007) on at most 40 random points per cluster.

    The subsample keeps seeding at O(40 L^2 d) whatever N is (Lloyd's iterations then use every point).
    """
    max_points = 40 * n_clusters
    if points.shape[0] > max_points:
        points = points[torch.randperm(points.shape[0], generator=generator)[:max_points].to(points.device)]
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    best = ((points - points[first]) ** 2).sum(-1)  # (N,) squared distance to the nearest chosen centroid
    for _ in range(1, n_clusters):
        weights = best.double().cpu()
        if float(weights.sum()) <= 0.0:  # all points coincide with chosen centroids: pick uniformly
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(idx)
        best = torch.minimum(best, ((points - points[idx]) ** 2).sum(-1))
    return points[torch.as_tensor(chosen, device=points.device)].clone()


def reseed_codewords(book: Tensor, dead: Tensor, candidates: Tensor, generator: torch.Generator) -> int:
    """Overwrite the rows of ``book`` (L, d) flagged in ``dead`` (L,) with random rows of ``candidates``, in place."""
    n_dead = int(dead.sum())
    if n_dead == 0 or candidates.shape[0] == 0:
        return 0
    pick = torch.randint(candidates.shape[0], (n_dead,), generator=generator).to(candidates.device)
    book[dead] = candidates[pick].to(book.dtype)
    return n_dead


# ------------------------------------------------------------------------------------- statistics


def perplexity(counts: Tensor) -> float:
    """exp(entropy) of a usage histogram: L when every code is used equally, 1 when one code takes all."""
    total = float(counts.sum())
    if total == 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def code_stats(codes: Tensor, codebook_size: int) -> dict[str, Any]:
    """Usage, perplexity and collisions of a token table ``codes`` (N, K).

    Returns:
        ``usage`` (fraction of the L codes used, per level), ``used_codes`` and ``perplexity`` per level,
        ``unique_tuples``, ``colliding_entities`` (entities whose K-tuple at least one other entity has),
        ``collision_rate`` (colliding / N) and ``max_bucket`` (most entities sharing one tuple).
    """
    codes = codes.cpu()
    n, k = codes.shape
    per_level = [torch.bincount(codes[:, level], minlength=codebook_size) for level in range(k)]
    _, bucket_of, bucket_sizes = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    colliding = int((bucket_sizes[bucket_of] > 1).sum()) if n else 0
    return {
        "entities": n,
        "levels": k,
        "codebook_size": codebook_size,
        "used_codes": [int((c > 0).sum()) for c in per_level],
        "usage": [float((c > 0).sum()) / codebook_size for c in per_level],
        "perplexity": [perplexity(c) for c in per_level],
        "unique_tuples": int(bucket_sizes.numel()),
        "colliding_entities": colliding,
        "collision_rate": colliding / n if n else 0.0,
        "max_bucket": int(bucket_sizes.max()) if n else 0,
    }


def disambiguate(codes: Tensor) -> Tensor:
    """Append one level that numbers the entities sharing a K-tuple (0, 1, ... in index order): (N, K + 1).

    The opt-in remedy for collisions (``tokenizer.disambiguate``), as TIGER (Rajput et al., 2023) does for
    semantic IDs: every entity gets a unique tuple and similar entities still share their first K tokens.
    """
    n = codes.shape[0]
    _, bucket_of = torch.unique(codes.cpu(), dim=0, return_inverse=True)  # (N,)
    order = torch.argsort(bucket_of, stable=True)  # entities grouped by tuple, index order inside a group
    sorted_buckets = bucket_of[order]
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = sorted_buckets[1:] != sorted_buckets[:-1]
    start_pos = torch.cummax(torch.where(starts, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0).values
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - start_pos
    return torch.cat([codes.cpu(), rank.unsqueeze(1)], dim=1)

"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), a sequential baseline.

Scope: the model only (training in :mod:`tokenrec.training.sasrec`). A user's most recent ``max_len`` items,
left-padded with 0, are embedded (item ``j`` is token ``j + 1``), added to learned position embeddings, and
read by a causal pre-norm transformer; the hidden state at position ``t`` scores every item by a dot product
with the shared item embedding table, predicting the item at ``t + 1``. Differences from the paper, kept
plain on purpose: GELU and the torch transformer layer. The loss (full softmax or the paper's binary
cross-entropy on one sampled negative) is the trainer's choice, :mod:`tokenrec.training.sasrec`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PAD = 0  # token of an empty position; item j is token j + 1


class SASRec(nn.Module):
    """Causal transformer over item sequences.

    Args:
        n_items: number of items (the vocabulary is ``n_items + 1`` with the padding token).
        dim: hidden size.
        layers: transformer blocks.
        heads: attention heads.
        max_len: longest sequence read (positions).
        dropout: dropout rate.
    """

    def __init__(self, n_items: int, dim: int, layers: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.n_items, self.max_len, self.heads = n_items, max_len, heads
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item_emb.weight, std=dim**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, d) of left-padded token sequences ``seq`` (B, T), T <= max_len.

        Position ``t`` attends to positions ``<= t`` that are not padding (and always to itself, so that a
        padding row is never fully masked; its output is ignored).
        """
        batch, length = seq.shape
        positions = torch.arange(self.max_len - length, self.max_len, device=seq.device)  # right-aligned
        x = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(positions)[None]
        future = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)  # (T, T)
        blocked = future[None] | (seq == PAD)[:, None, :]  # (B, T, T): True = may not attend
        blocked &= ~torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=seq.device).masked_fill(
            blocked, float("-inf")
        )
        mask = mask.repeat_interleave(self.heads, dim=0)  # (B * heads, T, T)
        hidden = self.encoder(self.dropout(x), mask=mask)
        return self.norm(hidden)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., n_items) of every item for hidden states (..., d)."""
        return hidden @ self.item_emb.weight[1:].T

    def score_next(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of the item following each left-padded sequence (B, T)."""
        return self.item_logits(self(seq)[:, -1])

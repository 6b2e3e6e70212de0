"""BPR matrix factorisation (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback",
UAI 2009), a baseline next to LightGCN and TokenRec.

Scope: the model only. A user and an item are each one learned vector; a pair scores ``<p_u, q_i>``. It exposes
the same interface as :class:`tokenrec.models.lightgcn.LightGCN` (``forward(users, pos, neg)`` returning the
batch's :class:`BatchEmbeddings`, ``ego_tables()`` and ``propagate()`` returning the full tables), so one BPR loop (:mod:`tokenrec.training.gnn`) trains both. For MF the final embedding *is* the ego
embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenrec.models.lightgcn import BatchEmbeddings


class MatrixFactorization(nn.Module):
    """Dot-product MF.

    Args:
        n_users, n_items: table sizes.
        dim: embedding size.
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user_ego = nn.Embedding(n_users, dim)
        self.item_ego = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_ego.weight, std=init_std)
        nn.init.normal_(self.item_ego.weight, std=init_std)

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> BatchEmbeddings:
        """Embeddings (B, d) of the batch's users, positive and negative items (final = ego)."""
        u, p, n = self.user_ego(users), self.item_ego(pos), self.item_ego(neg)
        return BatchEmbeddings(u, p, n, u, p, n)

    @torch.no_grad()
    def ego_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_ego.weight.clone(), self.item_ego.weight.clone()

    @torch.no_grad()
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full tables (n_users, d), (n_items, d)."""
        return self.user_ego.weight.clone(), self.item_ego.weight.clone()

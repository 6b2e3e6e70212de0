"""LLM4Rec, the generative-retrieval model of TokenRec (Qu et al., arXiv 2406.10450; PAPER.md section 2).

A prompt written with the users' and items' ID tokens goes through the LLM backbone, whose pooled hidden state
``h_i`` is projected by an MLP into the LightGCN space, ``z_i = Proj(h_i)`` in R^d. Items are then scored by
``y_ij = cos(z_i, q_j)`` against the frozen GNN item embeddings ``q_j`` (retrieval: :mod:`tokenrec.retrieval`).
The training objective per (user, item, lambda) is

    lambda = +1 (the observed next item):   1 - cos(z_i, q_j)
    lambda = -1 (a sampled negative):       max(0, cos(z_i, q_j) - gamma)

averaged here as: positive term + mean over the sample's negatives of the negative term (with one negative,
exactly the paper's sum), then mean over the batch.

Scope: the model (backbone -> pooled state -> projection), the loss, and :class:`IdTokenEmbedding`, which
holds the new ID-token rows of the input embeddings as their own parameter during training so that they can
learn at a higher rate than the pretrained vocabulary. Loading, pooling and adding the ID tokens are in
:mod:`tokenrec.backbone`; no I/O here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenrec.backbone import Backbone, IdVocabulary


class ProjectionHead(nn.Module):
    """The MLP ``Proj``: backbone hidden size H -> ``hidden`` -> d (the GNN embedding size)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)  # (B, H) -> (B, d)


class IdTokenEmbedding(nn.Module):
    """Input embeddings whose rows ``start .. stop - 1`` (the ID tokens) are a separate parameter.

    Same outputs as the original ``nn.Embedding``; only the parameters are split, so that an optimizer can
    give the new rows their own learning rate. :meth:`merged` writes them back into a plain embedding.
    """

    def __init__(self, base: nn.Embedding, start: int, stop: int) -> None:
        super().__init__()
        if not 0 <= start < stop <= base.num_embeddings:
            raise ValueError(f"ID token rows [{start}, {stop}) do not fit {base.num_embeddings} embeddings")
        self.base = base  # (V, H), rows start..stop-1 unused while split
        self.start, self.stop = start, stop
        self.id_rows = nn.Parameter(base.weight.detach()[start:stop].clone())  # (n_id, H)
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.padding_idx = base.padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_id = (input_ids >= self.start) & (input_ids < self.stop)  # (B, T)
        vocab = self.base(input_ids.masked_fill(is_id, 0))  # (B, T, H); masked positions replaced below
        ids = F.embedding((input_ids - self.start).clamp(0, self.stop - self.start - 1), self.id_rows)
        return torch.where(is_id.unsqueeze(-1), ids.to(vocab.dtype), vocab)  # (B, T, H)

    @torch.no_grad()
    def merged(self) -> nn.Embedding:
        """The plain embedding with the current ID-token rows written into it."""
        self.base.weight[self.start : self.stop] = self.id_rows.to(self.base.weight.dtype)
        return self.base


class LLM4Rec(nn.Module):
    """Backbone + projection: tokenized prompts ``(B, T)`` -> preference vectors ``z`` ``(B, d)``.

    Args:
        backbone: the text model with the ID tokens already added (:func:`tokenrec.backbone.add_id_tokens`).
        out_dim: d, the size of the GNN item embeddings that ``z`` is compared with.
        proj_hidden: hidden width of the projection MLP.
        proj_dropout: dropout inside the projection MLP (training only).
    """

    def __init__(self, backbone: Backbone, out_dim: int, proj_hidden: int = 512, proj_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.hidden_size, proj_hidden, out_dim, proj_dropout)
        self.out_dim = out_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids, attention_mask)  # (B, H) pooled hidden state
        return self.projection(h).float()  # (B, d); float32 even under autocast, for the cosines

    def split_id_embeddings(self, vocab: IdVocabulary) -> IdTokenEmbedding:
        """Give the ID tokens' input-embedding rows their own parameter (they must be one contiguous range)."""
        ids = torch.cat([vocab.user_token_ids.flatten(), vocab.item_token_ids.flatten()])
        start, stop = int(ids.min()), int(ids.max()) + 1
        if stop - start != ids.numel():
            raise ValueError(f"the {ids.numel()} ID tokens are not one contiguous id range [{start}, {stop})")
        current = self.backbone.model.get_input_embeddings()
        if isinstance(current, IdTokenEmbedding):
            return current
        split = IdTokenEmbedding(current, start, stop)
        self.backbone.model.set_input_embeddings(split)
        return split

    def merge_id_embeddings(self) -> None:
        """Undo :meth:`split_id_embeddings` (before saving the backbone with ``save_pretrained``)."""
        current = self.backbone.model.get_input_embeddings()
        if isinstance(current, IdTokenEmbedding):
            self.backbone.model.set_input_embeddings(current.merged())

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable parameters as (backbone's own, head = projection + split ID-token rows)."""
        embedding = self.backbone.model.get_input_embeddings()
        head_ids = {id(p) for p in self.projection.parameters()}
        if isinstance(embedding, IdTokenEmbedding):
            head_ids.add(id(embedding.id_rows))
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [p for p in trainable if id(p) not in head_ids], [p for p in trainable if id(p) in head_ids]


def cosine_to(z: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Cosines between ``z`` ``(B, d)`` and ``items`` ``(B, d)`` -> ``(B,)`` or ``(B, N, d)`` -> ``(B, N)``."""
    zn = F.normalize(z, dim=-1)
    qn = F.normalize(items, dim=-1)
    if items.dim() == 2:
        return (zn * qn).sum(-1)  # (B,)
    return torch.einsum("bd,bnd->bn", zn, qn)  # (B, N)


def generative_retrieval_loss(
    z: torch.Tensor,
    q_pos: torch.Tensor,
    neg_cos: torch.Tensor | None,
    margin: float = 0.0,
    neg_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TokenRec loss of one batch and detached statistics (mean positive and negative cosine).

    Args:
        z: ``(B, d)`` projected preference vectors.
        q_pos: ``(B, d)`` GNN embeddings of the observed next items.
        neg_cos: ``(B, N)`` cosines between ``z`` and the sample's negatives (see :func:`cosine_to`), or None.
        margin: gamma.
        neg_mask: ``(B, N)`` bool, False where a column is not a negative of that row (in-batch duplicates).
    """
    pos_cos = cosine_to(z, q_pos)  # (B,)
    loss = 1.0 - pos_cos  # (B,)
    stats = {"pos_cos": pos_cos.detach().mean()}
    if neg_cos is not None and neg_cos.shape[1] > 0:
        mask = torch.ones_like(neg_cos, dtype=torch.bool) if neg_mask is None else neg_mask  # (B, N)
        hinge = (neg_cos - margin).clamp_min(0.0) * mask  # (B, N)
        loss = loss + hinge.sum(1) / mask.sum(1).clamp_min(1)  # (B,)
        stats["neg_cos"] = (neg_cos.detach() * mask).sum() / mask.sum().clamp_min(1)
    return loss.mean(), stats


def item_table_loss(
    z: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    item_vectors: torch.Tensor,
    margin: float = 0.0,
    in_batch_negatives: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`generative_retrieval_loss` of a batch whose targets and negatives index ``item_vectors``.

    Args:
        z: ``(B, d)`` projected preference vectors.
        targets: ``(B,)`` observed next items.
        negatives: ``(B, n_neg)`` sampled negative items (``n_neg`` may be 0).
        item_vectors: ``(n_items, d)`` the frozen GNN item embeddings.
        margin: gamma.
        in_batch_negatives: also use the batch's other targets as negatives (never the row's own target).
    """
    q_pos = item_vectors[targets]  # (B, d)
    parts, masks = [], []
    if negatives.shape[1]:
        parts.append(cosine_to(z, item_vectors[negatives]))  # (B, n_neg)
        masks.append(negatives != targets[:, None])
    if in_batch_negatives:
        others = q_pos.unsqueeze(0).expand(len(z), -1, -1)  # (B, B, d): row b against every target
        parts.append(cosine_to(z, others))  # (B, B)
        masks.append(targets[None, :] != targets[:, None])  # not its own target (nor a duplicate of it)
    neg_cos = torch.cat(parts, dim=1) if parts else None
    neg_mask = torch.cat(masks, dim=1) if masks else None
    return generative_retrieval_loss(z, q_pos, neg_cos, margin, neg_mask)

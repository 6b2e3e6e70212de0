"""LLM4Rec, the generative-retrieval model of TokenRec (Qu et al., arXiv 2406.10450; PAPER.md section 2).

A prompt written with the users' and items' ID tokens goes through the LLM backbone, whose pooled hidden state
``h_i`` is projected by an MLP into the LightGCN space, ``z_i = Proj(h_i)`` in R^d. Items are then scored by
``y_ij = cos(z_i, q_j)`` against the frozen GNN item embeddings ``q_j`` (retrieval: :mod:`tokenrec.serving.retrieval`).
The training objective per (user, item, lambda) is

    lambda = +1 (the observed next item):   1 - cos(z_i, q_j)
    lambda = -1 (a sampled negative):       max(0, cos(z_i, q_j) - gamma)

averaged here as: positive term + mean over the sample's negatives of the negative term (with one negative,
exactly the paper's sum), then mean over the batch.

Scope: the model (backbone -> pooled state -> projection), the loss, and :class:`IdTokenEmbedding`, which
holds the new ID-token rows of the input embeddings as their own parameter during training so that they can
learn at a higher rate than the pretrained vocabulary. Loading, pooling and adding the ID tokens are in
:mod:`tokenrec.llm.backbone`; no I/O here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenrec.llm.backbone import Backbone, IdVocabulary


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
        backbone: the text model with the ID tokens already added (:func:`tokenrec.llm.backbone.add_id_tokens`).
        out_dim: d, the size of the GNN item embeddings that ``z`` is compared with.
        proj_hidden: hidden width of the projection MLP.
        proj_dropout: dropout inside the projection MLP (training only).
    """

    def __init__(self, backbone: Backbone, out_dim: int, proj_hidden: int = 512, proj_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.hidden_size, proj_hidden, out_dim, proj_dropout)
        self.out_dim = out_dim

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        blocks: torch.Tensor | None = None,
        ends: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Preference vectors: ``(B, d)`` of whole prompts, or ``(B, P, d)`` per position of causal prompts.

        Args:
            input_ids, attention_mask: ``(B, T)`` tokenized prompts.
            blocks, ends: for prompts in the causal layout (:meth:`tokenrec.llm.prompts.PromptEncoder.encode_causal`):
                block ids ``(B, T)`` and the last token ``(B, P)`` of each position to read.
        """
        if blocks is None or ends is None:
            h = self.backbone(input_ids, attention_mask)  # (B, H) pooled hidden state
        else:
            h = self.backbone.forward_positions(input_ids, attention_mask, blocks, ends)  # (B, P, H)
        return self.projection(h).float()  # (B, d) or (B, P, d); float32 even under autocast, for the cosines

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


# ------------------------------------------------------------------------------------- softmax losses (ours)
# The paper trains with the cosine + hinge loss above on one sampled negative. The losses below are a
# full-catalogue alternative (as SASRec-style sequential models train): cross-entropy over every item of the
# temperature-scaled similarity that retrieval ranks by, and a sampled version for catalogues too large for
# one (N, n_items) matrix.


def retrieval_logits(
    z: torch.Tensor, items: torch.Tensor, temperature: float, normalize_items: bool = True
) -> torch.Tensor:
    """Scores ``(N, M)`` of vectors ``z`` ``(N, d)`` against ``items`` ``(M, d)``, divided by ``temperature``.

    The unit preference vector against unit item vectors (cosine, the paper's retrieval) or, with
    ``normalize_items`` false, against the raw item vectors: the same order :mod:`tokenrec.serving.retrieval` ranks by.
    """
    q = F.normalize(items, dim=-1) if normalize_items else items
    return F.normalize(z, dim=-1) @ q.T / temperature  # (N, M)


def softmax_loss(
    z: torch.Tensor,
    targets: torch.Tensor,
    item_vectors: torch.Tensor,
    temperature: float,
    normalize_items: bool = True,
    seen: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Full-catalogue cross-entropy of the observed next items, and detached statistics.

    Args:
        z: ``(N, d)`` projected preference vectors, one per target.
        targets: ``(N,)`` observed next items.
        item_vectors: ``(n_items, d)`` the frozen GNN item embeddings.
        temperature: tau of ``score / tau``.
        normalize_items: cosine (true) or unit ``z`` against raw item vectors, as retrieval scores.
        seen: ``(rows, items)`` pairs left out of row ``rows[i]``'s softmax (the user's other training items,
            which evaluation excludes too); a pair naming the row's own target is ignored.
    """
    logits = retrieval_logits(z, item_vectors, temperature, normalize_items)  # (N, n_items)
    if seen is not None:
        rows, items = seen
        other = items != targets[rows]
        logits = logits.index_put((rows[other], items[other]), logits.new_tensor(float("-inf")))
    loss = F.cross_entropy(logits, targets)
    return loss, _cosine_stats(z, targets, item_vectors)


def sampled_softmax_loss(
    z: torch.Tensor,
    targets: torch.Tensor,
    item_vectors: torch.Tensor,
    candidates: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    normalize_items: bool = True,
    is_seen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sampled softmax with logQ correction: an estimate of :func:`softmax_loss` from ``M`` sampled items.

    ``candidates`` are ``M`` items drawn i.i.d. (shared by the batch) from a proposal ``Q``; the logit of a
    sampled item is corrected by ``- log(M * Q(j))``, so that the sum of their exponentials estimates the
    softmax's normaliser over the whole catalogue without bias (importance sampling; Bengio & Senecal 2008,
    Yi et al., RecSys 2019). The target's own logit is not corrected.

    Args:
        z: ``(N, d)``; targets: ``(N,)``; item_vectors: ``(n_items, d)``; temperature, normalize_items: as
            :func:`softmax_loss`.
        candidates: ``(M,)`` sampled items.
        log_q: ``(n_items,)`` log-probability of each item under the proposal.
        is_seen: ``(N, M)`` bool, True where candidate ``m`` is one of row ``n``'s user's training items
            (its target included): those are left out, as :func:`softmax_loss` leaves them out.
    """
    q_pos = item_vectors[targets]  # (N, d)
    qn = F.normalize(q_pos, dim=-1) if normalize_items else q_pos
    pos = (F.normalize(z, dim=-1) * qn).sum(-1, keepdim=True) / temperature  # (N, 1)
    neg = retrieval_logits(z, item_vectors[candidates], temperature, normalize_items)  # (N, M)
    neg = neg - (log_q[candidates] + torch.log(neg.new_tensor(float(len(candidates)))))[None, :]
    if is_seen is not None:
        neg = neg.masked_fill(is_seen, float("-inf"))
    logits = torch.cat([pos, neg], dim=1)  # (N, 1 + M): the target is column 0
    loss = F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))
    return loss, _cosine_stats(z, targets, item_vectors)


def _cosine_stats(z: torch.Tensor, targets: torch.Tensor, item_vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cosine to the targets and to the catalogue (all items), detached."""
    with torch.no_grad():
        zn = F.normalize(z.detach(), dim=-1)
        qn = F.normalize(item_vectors, dim=-1)  # (n_items, d)
        return {"pos_cos": (zn * qn[targets]).sum(-1).mean(), "neg_cos": (zn @ qn.mean(0)).mean()}

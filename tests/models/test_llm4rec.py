"""LLM4Rec (tokenrec/models/llm4rec.py): shapes, the split ID-token embeddings, the loss, gradients, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenrec.llm.backbone import TINY_BACKBONES, add_id_tokens, tiny_backbone
from tokenrec.llm.prompts import build_prompts, tokenize_prompts
from tokenrec.models.llm4rec import IdTokenEmbedding, LLM4Rec, cosine_to, generative_retrieval_loss

pytestmark = pytest.mark.model

K, L, D = 3, 8, 16


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def tiny_model(name: str = "tiny-bert", seed: int = 0, dropout: float = 0.0) -> tuple[LLM4Rec, object]:
    backbone = tiny_backbone(name, seed=seed)
    vocab = add_id_tokens(backbone, K, L, seed=seed)
    torch.manual_seed(seed)
    return LLM4Rec(backbone, D, proj_hidden=24, proj_dropout=dropout), vocab


def batch_of(model: LLM4Rec, n: int = 4, seed: int = 0, with_history: bool = True) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, L, size=(n, K))
    histories = (
        [rng.integers(0, L, size=(h, K)) for h in rng.integers(1, 6, size=n)] if with_history else None
    )
    return tokenize_prompts(model.backbone.tokenizer, build_prompts(users, histories))


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_forward_gives_one_float_vector_of_the_gnn_size_per_prompt(name):
    model, _ = tiny_model(name)
    batch = batch_of(model, n=5)
    z = model(batch["input_ids"], batch["attention_mask"])
    assert z.shape == (5, D) and z.dtype == torch.float32
    assert torch.isfinite(z).all()
    h = model.backbone(batch["input_ids"], batch["attention_mask"])  # (B, H)
    torch.testing.assert_close(z, model.projection(h))


def test_split_id_embeddings_change_nothing_in_the_outputs_and_merge_back_exactly():
    model, vocab = tiny_model()
    model.eval()
    batch = batch_of(model)
    before = model(batch["input_ids"], batch["attention_mask"])
    weight_before = model.backbone.model.get_input_embeddings().weight.detach().clone()
    split = model.split_id_embeddings(vocab)
    assert isinstance(model.backbone.model.get_input_embeddings(), IdTokenEmbedding)
    assert split.id_rows.shape == (2 * K * L, model.backbone.hidden_size)
    torch.testing.assert_close(model(batch["input_ids"], batch["attention_mask"]), before)
    backbone_params, head_params = model.parameter_groups()
    assert {id(p) for p in head_params} == {id(split.id_rows)} | {
        id(p) for p in model.projection.parameters()
    }
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in backbone_params} | {id(p) for p in head_params} == trainable
    assert not {id(p) for p in backbone_params} & {id(p) for p in head_params}
    with torch.no_grad():
        split.id_rows.add_(1.0)  # a training step on the ID rows only
    model.merge_id_embeddings()
    merged = model.backbone.model.get_input_embeddings()
    assert isinstance(merged, torch.nn.Embedding)
    ids = torch.cat([vocab.user_token_ids.flatten(), vocab.item_token_ids.flatten()])
    torch.testing.assert_close(merged.weight[ids], weight_before[ids] + 1.0)
    others = torch.ones(len(weight_before), dtype=torch.bool)
    others[ids] = False
    torch.testing.assert_close(merged.weight[others], weight_before[others])


def test_loss_matches_the_paper_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    z, q_pos, q_neg = (
        torch.randn(4, D, generator=g),
        torch.randn(4, D, generator=g),
        torch.randn(4, 3, D, generator=g),
    )
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False], [True, False, True]])
    neg_cos = cosine_to(z, q_neg)
    loss, stats = generative_retrieval_loss(z, q_pos, neg_cos, margin=0.1, neg_mask=mask)
    want = []
    for b in range(4):
        positive = 1.0 - F.cosine_similarity(z[b], q_pos[b], dim=0)
        hinges = [
            max(0.0, float(F.cosine_similarity(z[b], q_neg[b, j], dim=0)) - 0.1)
            for j in range(3)
            if mask[b, j]
        ]
        want.append(float(positive) + (sum(hinges) / len(hinges) if hinges else 0.0))
    assert float(loss) == pytest.approx(float(np.mean(want)), rel=1e-5)
    assert float(stats["pos_cos"]) == pytest.approx(float(F.cosine_similarity(z, q_pos).mean()), rel=1e-5)
    only_positive, _ = generative_retrieval_loss(z, q_pos, None)
    assert float(only_positive) == pytest.approx(float((1 - F.cosine_similarity(z, q_pos)).mean()), rel=1e-5)


def test_gradients_reach_the_backbone_the_id_rows_in_the_prompt_and_the_projection():
    model, vocab = tiny_model()
    split = model.split_id_embeddings(vocab)
    model.train()
    batch = batch_of(model)
    z = model(batch["input_ids"], batch["attention_mask"])
    targets = torch.randn(len(z), D)
    loss, _ = generative_retrieval_loss(z, targets, cosine_to(z, torch.randn(len(z), 2, D)))
    loss.backward()
    assert model.projection.net[0].weight.grad.abs().sum() > 0
    assert model.projection.net[-1].weight.grad.abs().sum() > 0
    layers = [p for name, p in model.backbone.model.named_parameters() if "encoder.layer.0." in name]
    assert layers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers if p.dim() == 2)
    used = torch.unique(
        batch["input_ids"][(batch["input_ids"] >= split.start) & (batch["input_ids"] < split.stop)]
    )
    row_grads = split.id_rows.grad.abs().sum(dim=1)  # (n_id,)
    assert (row_grads[used - split.start] > 0).all()
    unused = torch.ones(len(row_grads), dtype=torch.bool)
    unused[used - split.start] = False
    assert (row_grads[unused] == 0).all()
    assert (
        split.base.weight.grad[split.start : split.stop].abs().sum() == 0
    )  # the split rows own the gradient


def test_loss_falls_when_the_target_is_determined_by_the_user_tokens():
    """ID-only prompts; each user's target vector is a function of its tokens: the model must learn the map."""
    torch.manual_seed(0)
    model, vocab = tiny_model()
    model.split_id_embeddings(vocab)
    rng = np.random.default_rng(0)
    user_codes = rng.integers(0, L, size=(24, K))
    centres = torch.randn(L, D)
    targets = centres[torch.as_tensor(user_codes[:, 0])] + 0.5 * centres[torch.as_tensor(user_codes[:, 1])]
    batch = tokenize_prompts(model.backbone.tokenizer, build_prompts(user_codes, None))
    backbone_params, head_params = model.parameter_groups()
    optimizer = torch.optim.AdamW(
        [{"params": backbone_params, "lr": 3e-3}, {"params": head_params, "lr": 1e-2}]
    )
    model.train()
    losses = []
    for _ in range(60):
        z = model(batch["input_ids"], batch["attention_mask"])
        loss, _ = generative_retrieval_loss(z, targets, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]
    assert losses[-1] < 0.1  # cosine above 0.9 on average: the user tokens are read

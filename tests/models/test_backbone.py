"""LLM backbone (tokenrec/llm/backbone.py): pooling by hand, tiny models of each kind, ID tokens, loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

from tokenrec.config import Config, LlmConfig, PathsConfig
from tokenrec.errors import ConfigError
from tokenrec.llm.backbone import (
    MINILM_PACKAGE,
    SMOLLM2_PACKAGE,
    TINY_BACKBONES,
    add_id_tokens,
    backbone_cache_dir,
    detect_architecture,
    load_backbone,
    pool_hidden_states,
    tiny_backbone,
)
from tokenrec.llm.prompts import PromptEncoder, build_prompts, id_token_strings, tokenize_prompts

pytestmark = pytest.mark.model

STATES = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (B=2, T=4, H=3)


def test_mean_pooling_averages_only_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    pooled = pool_hidden_states(STATES, mask, "mean")
    want = torch.stack([STATES[0, :3].mean(0), STATES[1, 0]])
    torch.testing.assert_close(pooled, want)


def test_last_pooling_takes_the_last_real_token_with_right_or_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    want = torch.stack([STATES[0, 2], STATES[1, 0]])
    torch.testing.assert_close(pool_hidden_states(STATES, right, "last"), want)
    torch.testing.assert_close(pool_hidden_states(STATES, left, "last"), STATES[:, 3])


def test_cls_pooling_takes_the_first_position():
    torch.testing.assert_close(pool_hidden_states(STATES, torch.ones(2, 4), "cls"), STATES[:, 0])


def test_architecture_is_detected_from_the_config():
    assert detect_architecture(BertConfig()) == "encoder"
    assert detect_architecture(T5Config()) == "encoder_decoder"
    assert detect_architecture(LlamaConfig()) == "decoder"
    assert detect_architecture(GPT2Config()) == "decoder"


def _prompts(n: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 8, size=(n, 3))
    histories = [rng.integers(0, 8, size=(h, 3)) for h in (1, 4, 9)[:n]]
    return build_prompts(users, histories)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_pooled_vectors_match_a_hand_computation_and_ignore_padding(name):
    backbone = tiny_backbone(name)
    add_id_tokens(backbone, levels=3, codebook_size=8)
    prompts = _prompts()
    batch = tokenize_prompts(backbone.tokenizer, prompts, backbone.max_length)
    with torch.inference_mode():
        pooled = backbone(**batch)  # (B, H), padded to the longest prompt
        states = backbone.model(**batch).last_hidden_state
        for i, prompt in enumerate(prompts):
            alone = tokenize_prompts(backbone.tokenizer, [prompt])
            n = int(alone["attention_mask"].sum())
            by_hand = states[i, :n].mean(dim=0) if backbone.pooling == "mean" else states[i, n - 1]
            torch.testing.assert_close(pooled[i], by_hand)
            torch.testing.assert_close(pooled[i], backbone(**alone)[0], atol=1e-5, rtol=1e-4)  # no padding
    assert pooled.shape == (3, backbone.hidden_size)
    expected = {"tiny-bert": "encoder/mean", "tiny-llama": "decoder/last", "tiny-t5": "encoder_decoder/mean"}
    assert f"{backbone.architecture}/{backbone.pooling}" == expected[name]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_id_tokens_are_whole_new_tokens_with_embedding_rows(name):
    backbone = tiny_backbone(name)
    old_len = len(backbone.tokenizer)
    old_weight = backbone.model.get_input_embeddings().weight.detach().clone()
    vocab = add_id_tokens(backbone, levels=3, codebook_size=16)
    tokenizer = backbone.tokenizer
    assert len(tokenizer) == old_len + 2 * 3 * 16
    assert backbone.model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert vocab.user_token_ids.shape == (3, 16) and vocab.item_token_ids.shape == (3, 16)
    for kind, ids in (("user", vocab.user_token_ids), ("item", vocab.item_token_ids)):
        for token, token_id in zip(id_token_strings(kind, 3, 16), ids.flatten().tolist(), strict=True):
            assert tokenizer.convert_ids_to_tokens(tokenizer.encode(token, add_special_tokens=False)) == [
                token
            ]
            assert token_id >= old_len
    weight = backbone.model.get_input_embeddings().weight
    torch.testing.assert_close(weight[:old_len], old_weight)  # the existing vocabulary is untouched


def test_mean_init_sits_at_the_mean_of_the_existing_embeddings():
    backbone = tiny_backbone("tiny-bert")
    reference = backbone.model.get_input_embeddings().weight.detach().clone()
    vocab = add_id_tokens(backbone, 3, 16, init="mean", noise=0.1, seed=1)
    new = backbone.model.get_input_embeddings().weight[vocab.item_token_ids.flatten()].detach()
    mean, std = reference.mean(0), reference.std(0)
    assert torch.all((new - mean).abs() <= 6 * 0.1 * std)
    assert new.std(0).mean() > 0.01 * std.mean()  # distinct tokens, not one vector
    exact = tiny_backbone("tiny-bert")
    vocab = add_id_tokens(exact, 3, 16, init="mean", noise=0.0)
    torch.testing.assert_close(exact.model.get_input_embeddings().weight[vocab.user_token_ids[0, 0]], mean)


def test_codeword_init_keeps_equal_codewords_equal_and_near_ones_near():
    backbone = tiny_backbone("tiny-llama")
    generator = torch.Generator().manual_seed(0)
    codebooks = {kind: torch.randn(2, 8, 6, generator=generator) for kind in ("user", "item")}
    codebooks["item"][1, 3] = codebooks["item"][0, 5]  # two tokens share a codeword
    codebooks["item"][1, 4] = codebooks["item"][0, 5] + 0.01  # a third is very close to it
    vocab = add_id_tokens(backbone, 2, 8, init="codeword", codebooks=codebooks)
    weight = backbone.model.get_input_embeddings().weight.detach()
    a, b, c = (weight[vocab.item_token_ids[i, j]] for i, j in ((0, 5), (1, 3), (1, 4)))
    torch.testing.assert_close(a, b)
    far = torch.stack([weight[i] for i in vocab.item_token_ids.flatten().tolist()]) - a
    assert (c - a).norm() < 0.1 * far.norm(dim=1).max()
    with pytest.raises(ConfigError, match="codebooks"):
        add_id_tokens(tiny_backbone("tiny-bert"), 2, 8, init="codeword")


def test_random_init_uses_the_models_initializer_range():
    backbone = tiny_backbone("tiny-bert")
    vocab = add_id_tokens(backbone, 3, 64, init="random")
    new = backbone.model.get_input_embeddings().weight[vocab.user_token_ids.flatten()].detach()
    assert abs(float(new.std()) - backbone.model.config.initializer_range) < 0.005


def test_adding_the_tokens_twice_changes_nothing_and_other_k_or_l_is_refused():
    backbone = tiny_backbone("tiny-bert")
    first = add_id_tokens(backbone, 3, 8)
    size = len(backbone.tokenizer)
    second = add_id_tokens(backbone, 3, 8)
    assert len(backbone.tokenizer) == size
    assert torch.equal(first.item_token_ids, second.item_token_ids)
    with pytest.raises(ConfigError, match="another K or L"):
        add_id_tokens(backbone, 3, 16)


def test_a_saved_backbone_loads_back_with_its_tokens_and_outputs(tmp_path):
    backbone = tiny_backbone("tiny-llama")
    vocab = add_id_tokens(backbone, 3, 8)
    backbone.save(tmp_path / "llm")
    loaded = load_backbone(LlmConfig(backbone=str(tmp_path / "llm")), cache_dir=tmp_path / "cache")
    assert (loaded.architecture, loaded.pooling) == ("decoder", "last")
    assert torch.equal(add_id_tokens(loaded, 3, 8).user_token_ids, vocab.user_token_ids)
    batch = tokenize_prompts(backbone.tokenizer, _prompts())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(**batch), backbone(**batch))


def test_the_cache_folder_defaults_to_tokenrec_home():
    assert backbone_cache_dir(Config(paths=PathsConfig(home="/h"))) == Path("/h/cache/backbones")
    assert backbone_cache_dir(Config(llm=LlmConfig(cache_dir="/c"))) == Path("/c")


def test_a_model_that_is_not_available_offline_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="allow_download"):
        load_backbone(LlmConfig(backbone="no-such-org/no-such-model"), cache_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec(MINILM_PACKAGE) is None, reason=f"needs {MINILM_PACKAGE}")
def test_minilm_loads_offline_and_keeps_id_tokens_whole(tmp_path):
    backbone = load_backbone(LlmConfig(backbone="minilm"), cache_dir=tmp_path)
    assert (backbone.architecture, backbone.pooling, backbone.hidden_size) == ("encoder", "mean", 384)
    assert 22_000_000 < backbone.num_parameters() < 23_500_000
    add_id_tokens(backbone, 3, 256)
    tokens = backbone.tokenizer.tokenize("user_<u1-128><u2-21><u3-35> likes item_<v1-42><v2-12><v3-255>")
    ids = ["<u1-128>", "<u2-21>", "<u3-35>", "<v1-42>", "<v2-12>", "<v3-255>"]
    assert [t for t in tokens if t.startswith("<")] == ids
    batch = tokenize_prompts(backbone.tokenizer, _prompts(2), backbone.max_length)
    with torch.inference_mode():
        assert backbone(**batch).shape == (2, 384)
    users, histories = np.array([[128, 21, 35], [0, 1, 2]]), [np.arange(60).reshape(20, 3), np.ones((1, 3), int)]
    for style in ("paper", "compact"):  # the real WordPiece tokenizer: assembled ids == tokenized strings
        encoder = PromptEncoder(backbone.tokenizer, style)
        assert encoder.assembles
        expected = tokenize_prompts(backbone.tokenizer, build_prompts(users, histories, style=style))
        assert torch.equal(encoder.encode(users, histories)["input_ids"], expected["input_ids"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(SMOLLM2_PACKAGE) is None, reason=f"needs {SMOLLM2_PACKAGE}")
def test_smollm2_is_converted_once_from_gguf_and_then_loaded_from_the_cache(tmp_path):
    cfg = LlmConfig(backbone="smollm2")
    backbone = load_backbone(cfg, cache_dir=tmp_path)
    weights = tmp_path / "smollm2" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert (backbone.architecture, backbone.pooling, backbone.hidden_size) == ("decoder", "last", 576)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind
    again = load_backbone(cfg, cache_dir=tmp_path)
    assert weights.stat().st_mtime_ns == stamp  # not converted a second time
    add_id_tokens(again, 3, 8)
    assert again.tokenizer.tokenize("user_<u1-7><u2-0>")[-2:] == ["<u1-7>", "<u2-0>"]
    batch = tokenize_prompts(again.tokenizer, _prompts(2), again.max_length)
    with torch.inference_mode():
        assert torch.isfinite(again(**batch)).all()

"""Prompts and ID token strings (tokenrec/llm/prompts.py), tokenized with a tiny in-code tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenrec.errors import ConfigError
from tokenrec.llm.backbone import add_id_tokens, tiny_backbone
from tokenrec.llm.prompts import (
    HISTORY_TEMPLATES,
    HISTORY_UNSEEN_TEMPLATE,
    ID_ONLY_TEMPLATES,
    ID_ONLY_UNSEEN_TEMPLATE,
    PromptEncoder,
    build_prompts,
    entity_text,
    history_codes,
    id_token,
    id_token_strings,
    recent_history,
    select_rows,
    tokenize_prompts,
)

pytestmark = pytest.mark.unit

USER_CODES = np.array([[128, 21, 35], [0, 1, 2]])
HISTORY = [np.array([[42, 12, 98], [1, 2, 3]]), np.array([[7, 7, 7]])]


def test_token_strings_follow_the_paper_format():
    assert id_token("user", 1, 128) == "<u1-128>"
    assert id_token("item", 3, 98) == "<v3-98>"
    tokens = id_token_strings("item", 3, 4)
    assert len(tokens) == 12 and len(set(tokens)) == 12
    assert (
        tokens[0] == "<v1-0>" and tokens[5] == "<v2-1>" and tokens[-1] == "<v3-3>"
    )  # (level - 1) * L + code
    assert entity_text("user", [128, 21, 35]) == "<u1-128><u2-21><u3-35>"


def test_eval_prompts_use_the_papers_wording():
    prompts = build_prompts(USER_CODES, HISTORY, mode="eval")
    assert prompts[0] == (
        "According to what items user_<u1-128><u2-21><u3-35> has interacted with: "
        "item_<v1-42><v2-12><v3-98>, item_<v1-1><v2-2><v3-3>. Can you describe the user's preferences?"
    )
    assert build_prompts(USER_CODES[:1], None, mode="eval") == [
        "I wonder what user_<u1-128><u2-21><u3-35> will like. Can you help me decide?"
    ]


def test_a_user_without_history_gets_the_id_only_family():
    prompts = build_prompts(USER_CODES, [HISTORY[0], np.zeros((0, 3), dtype=int)], mode="eval")
    assert prompts[1] == "I wonder what user_<u1-0><u2-1><u3-2> will like. Can you help me decide?"


def test_history_is_the_most_recent_items_in_time_order():
    sequence = np.array([5, 3, 9, 1])
    assert recent_history(sequence, 2).tolist() == [9, 1]
    assert recent_history(sequence, 10).tolist() == [5, 3, 9, 1]
    assert recent_history(sequence, 5).tolist() == [5, 3, 9, 1]  # shorter than H, longer than H / 2: all of it
    assert recent_history(sequence, 7).tolist() == [5, 3, 9, 1]
    assert recent_history(sequence, 0).tolist() == []
    item_codes = np.arange(30).reshape(10, 3)  # item j has codes (3j, 3j+1, 3j+2)
    codes = history_codes([sequence, np.array([], dtype=int)], np.array([0, 1]), item_codes, 3)
    assert codes[0].tolist() == [[9, 10, 11], [27, 28, 29], [3, 4, 5]]
    assert codes[1].shape == (0, 3)


def _fill(template: str, user: str, history: str | None) -> str:
    return template.format(user=user, history=history) if history is not None else template.format(user=user)


@pytest.mark.parametrize("with_history", [True, False])
def test_training_draws_every_paraphrase_and_never_the_unseen_template(with_history):
    histories = [HISTORY[0]] * 200 if with_history else None
    users = np.repeat(USER_CODES[:1], 200, axis=0)
    prompts = build_prompts(users, histories, mode="train", rng=np.random.default_rng(0))
    user = "user_<u1-128><u2-21><u3-35>"
    history = "item_<v1-42><v2-12><v3-98>, item_<v1-1><v2-2><v3-3>" if with_history else None
    family = HISTORY_TEMPLATES if with_history else ID_ONLY_TEMPLATES
    unseen = HISTORY_UNSEEN_TEMPLATE if with_history else ID_ONLY_UNSEEN_TEMPLATE
    train_texts = {_fill(t, user, history) for t in family}
    assert set(prompts) == train_texts  # every paraphrase is used, nothing else
    assert _fill(unseen, user, history) not in train_texts
    unseen_prompts = build_prompts(users[:2], histories[:2] if histories else None, mode="unseen")
    assert unseen_prompts == [_fill(unseen, user, history)] * 2


def test_training_template_draws_are_reproducible_and_need_a_generator():
    users = np.repeat(USER_CODES, 20, axis=0)
    a = build_prompts(users, None, mode="train", rng=np.random.default_rng(7))
    b = build_prompts(users, None, mode="train", rng=np.random.default_rng(7))
    assert a == b
    with pytest.raises(ValueError, match="rng"):
        build_prompts(users, None, mode="train")
    with pytest.raises(ConfigError, match="mode"):
        build_prompts(users, None, mode="test")


@pytest.fixture(scope="module")
def tokenizer():
    backbone = tiny_backbone("tiny-bert")
    add_id_tokens(backbone, levels=3, codebook_size=256)
    return backbone.tokenizer


def test_each_id_token_is_one_token(tokenizer):
    for text in ("<u1-128>", "<v3-98>", "<u3-255>", "<v1-0>"):
        assert tokenizer.tokenize(text) == [text]
    tokens = tokenizer.tokenize("user_<u1-128><u2-21><u3-35> and item_<v1-42><v2-12><v3-98>.")
    assert tokens[2:5] == ["<u1-128>", "<u2-21>", "<u3-35>"]
    assert tokens[-4:-1] == ["<v1-42>", "<v2-12>", "<v3-98>"]


def test_compact_history_is_shorter_and_keeps_every_token(tokenizer):
    history = [np.arange(60).reshape(20, 3)]
    paper = build_prompts(USER_CODES[:1], history, style="paper")[0]
    compact = build_prompts(USER_CODES[:1], history, style="compact")[0]
    assert "<v1-57><v2-58><v3-59>" in compact and "item_" not in compact.split(":")[1]
    n_paper, n_compact = len(tokenizer.tokenize(paper)), len(tokenizer.tokenize(compact))
    assert n_compact <= n_paper - 20 * 2  # at least "item", "_" saved per item


def test_batches_are_padded_to_their_longest_prompt_only(tokenizer):
    prompts = build_prompts(USER_CODES, [np.tile(HISTORY[0], (10, 1)), HISTORY[1]], mode="eval")
    batch = tokenize_prompts(tokenizer, prompts, max_length=512)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    short = tokenizer(prompts[1])["input_ids"]
    assert batch["input_ids"][1, : len(short)].tolist() == short
    assert set(batch["input_ids"][1, len(short) :].tolist()) == {tokenizer.pad_token_id}
    padded8 = tokenize_prompts(tokenizer, prompts, pad_to_multiple_of=8)["input_ids"]
    assert padded8.shape[1] % 8 == 0 and padded8.shape[1] < max(lengths) + 8


def test_a_prompt_longer_than_the_backbone_takes_is_an_error(tokenizer):
    prompts = build_prompts(USER_CODES[:1], [np.zeros((50, 3), dtype=int)])
    with pytest.raises(ConfigError, match="history_len"):
        tokenize_prompts(tokenizer, prompts, max_length=64)


def assert_same_ids(encoder, tokenizer, user_codes, histories, mode, style):
    """The assembled ids equal the tokenizer's ids of the prompt strings, template draws included."""
    got = encoder.encode(user_codes, histories, mode, np.random.default_rng(7))
    prompts = build_prompts(user_codes, histories, mode, np.random.default_rng(7), style)
    expected = tokenize_prompts(tokenizer, prompts)
    assert torch.equal(got["input_ids"], expected["input_ids"]), (mode, style)
    assert torch.equal(got["attention_mask"], expected["attention_mask"]), (mode, style)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-t5"])
@pytest.mark.parametrize("style", ["paper", "compact"])
def test_assembled_prompt_ids_equal_the_tokenized_strings(name, style):
    backbone = tiny_backbone(name)
    add_id_tokens(backbone, levels=3, codebook_size=16)
    encoder = PromptEncoder(backbone.tokenizer, style)
    assert encoder.assembles  # these tokenizers split around ID tokens: no string fallback
    rng = np.random.default_rng(0)
    users = rng.integers(0, 16, (40, 3))
    histories = [rng.integers(0, 16, (int(rng.integers(0, 7)), 3)) for _ in range(40)]  # some empty
    for mode in ("eval", "unseen", "train"):
        assert_same_ids(encoder, backbone.tokenizer, users, histories, mode, style)
        assert_same_ids(encoder, backbone.tokenizer, users, None, mode, style)


def test_assembled_prompts_pad_on_the_tokenizers_side():
    backbone = tiny_backbone("tiny-llama")
    add_id_tokens(backbone, levels=3, codebook_size=16)
    backbone.tokenizer.padding_side = "left"
    encoder = PromptEncoder(backbone.tokenizer, "paper")
    histories = [np.ones((4, 3), dtype=int), np.ones((1, 3), dtype=int)]
    assert_same_ids(encoder, backbone.tokenizer, USER_CODES % 16, histories, "eval", "paper")
    encoded = encoder.encode(USER_CODES % 16, histories)
    assert encoded["attention_mask"][1, 0] == 0 and encoded["attention_mask"][1, -1] == 1
    short = select_rows(encoded, np.array([1]), padding_side="left")  # cropped to its own length
    assert short["attention_mask"].all() and short["input_ids"].shape[1] == int(encoded["attention_mask"][1].sum())


def test_a_tokenizer_whose_pieces_change_with_their_neighbours_falls_back_to_strings(tokenizer):
    class Contextual:  # tokenizes one prompt differently once it shows three items: pieces are not constant
        padding_side, pad_token_id = tokenizer.padding_side, tokenizer.pad_token_id

        def get_added_vocab(self):
            return tokenizer.get_added_vocab()

        def __call__(self, text, **kwargs):
            encoded = tokenizer(text, **kwargs)
            if isinstance(text, str) and text.count("<v1-") >= 3:
                encoded["input_ids"] = encoded["input_ids"][:-1]
            return encoded

    encoder = PromptEncoder(Contextual(), "paper")
    assert not encoder.assembles
    assert_same_ids(encoder, tokenizer, USER_CODES, HISTORY, "train", "paper")


def test_select_rows_crops_to_the_longest_kept_prompt(tokenizer):
    encoder = PromptEncoder(tokenizer, "compact")
    histories = [np.tile(HISTORY[0], (10, 1)), HISTORY[1]]
    encoded = encoder.encode(USER_CODES, histories)
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    assert encoded["input_ids"].shape[1] == max(lengths)
    short = select_rows(encoded, np.array([1]))
    assert short["input_ids"].shape == (1, lengths[1])
    assert select_rows(encoded, np.array([1]), pad_to_multiple_of=8)["input_ids"].shape[1] == min(
        -(-lengths[1] // 8) * 8, max(lengths)
    )


def test_codes_without_tokens_and_long_prompts_are_errors(tokenizer):
    encoder = PromptEncoder(tokenizer, "paper")
    with pytest.raises(ConfigError, match="different runs"):
        encoder.encode(np.array([[0, 1, 256]]), None)
    with pytest.raises(ConfigError, match="history_len"):
        encoder.encode(USER_CODES[:1], [np.zeros((50, 3), dtype=int)], max_length=64)

"""Causal training of LLM4Rec: the causal prompt layout, the block-causal mask, windows, buckets and the losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenrec.data.interactions import InteractionData
from tokenrec.llm.backbone import add_id_tokens, block_causal_mask, tiny_backbone
from tokenrec.llm.prompts import PromptEncoder, build_prompts
from tokenrec.llm.scorer import TokenRecScorer
from tokenrec.models.llm4rec import LLM4Rec, sampled_softmax_loss, softmax_loss
from tokenrec.training.llm_samples import CausalWindows, bucketed

pytestmark = pytest.mark.model

K, L = 3, 8


def extended(name: str, pooling: str = "auto"):
    backbone = tiny_backbone(name, pooling=pooling)
    add_id_tokens(backbone, K, L, seed=0)
    return backbone


def codes(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, L, size=(rows, K))


# ------------------------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("style", ["paper", "compact"])
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-t5"])
def test_causal_prompts_are_the_history_template_cut_after_the_history_and_ends_mark_each_item(name, style):
    backbone = extended(name)
    encoder = PromptEncoder(backbone.tokenizer, style)
    users = codes(4, 0)
    histories = [codes(n, n + 1) for n in (0, 1, 2, 5)]
    encoded = encoder.encode_causal(users, histories, "train", np.random.default_rng(3))
    texts = build_prompts(users, histories, "train", np.random.default_rng(3), style, layout="causal")
    item_ids = set(encoder.token_ids["item"].flatten().tolist())
    assert encoded["ends"].shape == (4, 6)
    for row, (text, history) in enumerate(zip(texts, histories, strict=True)):
        expected = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        length = int(encoded["attention_mask"][row].sum())
        ids = encoded["input_ids"][row, :length].tolist()
        specials = set(backbone.tokenizer.all_special_ids)
        assert [i for i in ids if i not in specials] == expected  # the same text, in the same tokens
        ends, blocks = encoded["ends"][row], encoded["blocks"][row]
        assert ends[len(history) + 1 :].tolist() == [-1] * (5 - len(history))
        for t in range(1, len(history) + 1):  # item t's block ends at its last ID token, its code K
            end = int(ends[t])
            assert ids[end] in item_ids and blocks[end] == t
            assert ids[end] == encoder.token_ids["item"][K - 1, history[t - 1][K - 1]]
        assert int(ends[0]) == int((blocks == 0).sum()) - 1  # position 0: the prefix, user tokens included
        assert (blocks[length:] == -1).all() and (blocks[:length] >= 0).all()


def test_the_block_causal_mask_lets_a_token_see_its_block_and_earlier_ones_only():
    blocks = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = block_causal_mask(blocks)[0, 0] == 0
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 0],  # a padding query reads the prefix: no row is fully masked
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(allowed, expected)


@pytest.mark.parametrize(("name", "pooling"), [("tiny-bert", "mean"), ("tiny-bert", "last"), ("tiny-llama", "last"),
                                                ("tiny-llama", "mean"), ("tiny-t5", "mean")])  # fmt: skip
def test_position_t_does_not_change_when_later_items_change(name, pooling):
    backbone = extended(name, pooling)
    model = LLM4Rec(backbone, out_dim=8, proj_hidden=16).eval()
    encoder = PromptEncoder(backbone.tokenizer, "paper")
    users = codes(1, 0).repeat(2, axis=0)  # one user, two prompts
    history = codes(6, 1)
    changed = history.copy()
    changed[3:] = (changed[3:] + 1) % L  # items 4..6 differ
    earlier = history.copy()
    earlier[1] = (earlier[1] + 1) % L  # item 2 differs
    out = {}
    with torch.no_grad():
        for key, shown in (("base", history), ("later", changed), ("earlier", earlier)):
            batch = encoder.encode_causal(users, [shown, shown[:4]], "eval")
            out[key] = model(batch["input_ids"], batch["attention_mask"], batch["blocks"], batch["ends"])
    assert out["base"].shape == (2, 7, 8)
    torch.testing.assert_close(out["later"][0, :4], out["base"][0, :4], rtol=0, atol=1e-6)  # positions 0..3
    assert not torch.allclose(out["later"][0, 4:], out["base"][0, 4:], atol=1e-4)
    torch.testing.assert_close(out["earlier"][:, :2], out["base"][:, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(out["earlier"][0, 2:], out["base"][0, 2:], atol=1e-4)
    # row 1 shows only 4 items: its positions 0..3 are row 0's (the same prompt up to there), padding aside
    torch.testing.assert_close(out["base"][1, :4], out["base"][0, :4], rtol=1e-5, atol=1e-5)


def test_serving_reads_the_position_training_reads_for_the_whole_history():
    backbone = extended("tiny-bert")
    model = LLM4Rec(backbone, out_dim=8, proj_hidden=16).eval()
    user_codes, item_codes = codes(5, 0), codes(10, 1)
    sequences = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9]), np.array([0]), np.array([2, 9]),
                 np.array([3, 4, 5, 6])]  # fmt: skip
    scorer = TokenRecScorer(model, user_codes, item_codes, np.random.default_rng(2).normal(size=(10, 8)),
                            history_len=4, batch_size=2, layout="causal")  # fmt: skip
    served = scorer.embed(np.arange(5), sequences)  # (5, d)
    encoder = PromptEncoder(backbone.tokenizer, "paper")
    for user, sequence in enumerate(sequences):
        shown = item_codes[sequence[-4:]]
        batch = encoder.encode_causal(user_codes[user : user + 1], [shown], "eval")
        with torch.no_grad():
            every = model(batch["input_ids"], batch["attention_mask"], batch["blocks"], batch["ends"])[0]
        np.testing.assert_allclose(served[user], every[len(shown)].numpy(), rtol=1e-5, atol=1e-6)
    id_only = scorer.embed(np.arange(5), sequences, "id_only")
    for user in range(5):  # the ID-only variant of the causal layout is position 0
        batch = encoder.encode_causal(user_codes[user : user + 1], [item_codes[sequences[user]]], "eval")
        with torch.no_grad():
            first = model(batch["input_ids"], batch["attention_mask"], batch["blocks"], batch["ends"])[0, 0]
        np.testing.assert_allclose(id_only[user], first.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ windows


def sequences_data(lengths: list[int]) -> InteractionData:
    users, items, times, splits = [], [], [], []
    for user, n in enumerate(lengths):
        for t in range(n + 2):  # n training items, then validation and test
            users.append(user)
            items.append((user * 7 + t) % 50)
            times.append(t)
            splits.append(0 if t < n else (1 if t == n else 2))
    return InteractionData.from_arrays(users, items, times, splits, len(lengths), 50)


@pytest.mark.parametrize("stride", [0, 1, 2, 4])
def test_windows_make_every_training_item_a_target_exactly_once_with_at_most_h_items_shown(stride):
    data = sequences_data([1, 2, 5, 6, 13])
    windows = CausalWindows(data, history_len=4, stride=stride)
    for user, sequence in enumerate(data.train_sequences):
        mine = np.flatnonzero(windows.users == user)
        targets = []
        for w in mine:
            a, c, first = windows.starts[w], windows.stops[w], windows.first[w]
            assert 1 <= c - a <= 5 and windows.lengths()[w] == c - a - 1  # H = 4 shown, 5 targets at most
            targets += list(range(a + first, c))
            if first:  # a later window: its targets keep at least H + 1 - stride items of context
                assert first >= 5 - (stride or 5)
        assert sorted(targets) == list(range(len(sequence)))
    assert windows.n_targets == sum(len(s) for s in data.train_sequences)
    assert (CausalWindows(data, 4, 5).stops == CausalWindows(data, 4).stops).all()  # default: no overlap


def test_a_long_history_is_tiled_from_its_most_recent_item_back():
    windows = CausalWindows(sequences_data([13]), history_len=4)
    assert list(zip(windows.starts, windows.stops, strict=True)) == [(0, 3), (3, 8), (8, 13)]


def test_bucketed_batches_keep_every_row_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=1000)
    order = rng.permutation(1000)
    out = bucketed(order, lengths, batch=16, bucket_batches=8, rng=np.random.default_rng(1))
    assert sorted(out.tolist()) == list(range(1000))

    def padding(rows):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in np.split(rows, range(16, len(rows), 16)))

    assert padding(out) < 0.3 * padding(order)
    again = bucketed(order, lengths, batch=16, bucket_batches=8, rng=np.random.default_rng(1))
    assert np.array_equal(out, again)
    assert np.array_equal(bucketed(order, lengths, 16, 1, rng), order)  # 1 = off


# ------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("normalize_items", [True, False])
def test_softmax_loss_is_cross_entropy_over_items_with_the_user_s_other_items_left_out(normalize_items):
    g = torch.Generator().manual_seed(0)
    z, items = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g) * 2
    targets = torch.tensor([1, 4, 0])
    seen = (torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 5, 3]))  # row 0's target is among its own items
    loss, stats = softmax_loss(z, targets, items, 0.5, normalize_items, seen)
    q = F.normalize(items, dim=-1) if normalize_items else items
    expected = []
    for row, left_out in enumerate([[2], [5], [3]]):
        scores = F.normalize(z[row], dim=-1) @ q.T / 0.5
        keep = [j for j in range(6) if j not in left_out]
        expected.append(-scores[targets[row]] + torch.logsumexp(scores[keep], 0))
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert -1.0 <= stats["pos_cos"] <= 1.0


@pytest.mark.parametrize("normalize_items", [True, False])
def test_sampled_softmax_with_logq_correction_estimates_the_full_softmax(normalize_items):
    g = torch.Generator().manual_seed(1)
    n_items = 40
    z, items = torch.randn(5, 8, generator=g), torch.randn(n_items, 8, generator=g)
    targets = torch.tensor([0, 3, 7, 7, 39])
    popularity = torch.arange(1, n_items + 1, dtype=torch.float64) ** 1.5  # far from uniform
    q = popularity / popularity.sum()
    full, _ = softmax_loss(z, targets, items, 0.3, normalize_items)
    # many samples from a skewed proposal: the corrected estimate converges to the full softmax...
    candidates = torch.multinomial(q.float(), 400_000, replacement=True, generator=g)
    is_seen = candidates[None, :] == targets[:, None]  # the target itself is left out of the sampled part
    estimate, _ = sampled_softmax_loss(z, targets, items, candidates, q.float().log(), 0.3, normalize_items, is_seen)
    assert float(estimate) == pytest.approx(float(full), rel=0.01)
    # ...and without the correction it does not
    biased, _ = sampled_softmax_loss(z, targets, items, candidates, torch.full((n_items,), -np.log(n_items)),
                                     0.3, normalize_items, is_seen)  # fmt: skip
    assert abs(float(biased) - float(full)) > 0.05

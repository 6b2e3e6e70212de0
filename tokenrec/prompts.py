"""Prompts of LLM4Rec and the one place that defines how user and item ID tokens are written.

TokenRec (Qu et al., arXiv 2406.10450), section "LLM4Rec": users and items appear in prompts as their K
MQ-Tokenizer tokens, and two template families are used: with the user's history ("According to what items
user_<u..> has interacted with: item_<v..>, item_<v..>. Can you describe the user's preferences?") and user-ID
only ("I wonder what user_<u..> will like. Can you help me decide?"). Training samples a template per prompt
from a few paraphrases; evaluation uses the first (the paper's wording) or a held-out "unseen" template that
training never sees. Scope: token strings, templates, history selection, prompt building and tokenization
with dynamic padding.

Token string format (the only definition; everything else calls these functions):
    user token ``<u{level}-{code}>`` (``<u1-128>``), item token ``<v{level}-{code}>`` (``<v3-98>``), with
    ``level`` in 1..K (1-based, as in the paper) and ``code`` in 0..L-1 (0-based, as the tokenizer emits).
    An entity is its K tokens without separators, ``<u1-128><u2-21><u3-35>``; a prompt writes it as
    ``user_<u1-128><u2-21><u3-35>`` or ``item_<v1-42><v2-12><v3-98>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenrec.errors import ConfigError

USER_PREFIX, ITEM_PREFIX = "u", "v"
KINDS = {"user": USER_PREFIX, "item": ITEM_PREFIX}
PROMPT_MODES = ("train", "eval", "unseen")

# Training paraphrases; index 0 is the paper's wording and the "eval" template. Fields: {user}, {history}.
HISTORY_TEMPLATES = (
    "According to what items {user} has interacted with: {history}. Can you describe the user's preferences?",
    "{user} has interacted with these items: {history}. What does the user prefer?",
    "Given the items {user} interacted with, {history}, what will the user like next?",
)
ID_ONLY_TEMPLATES = (
    "I wonder what {user} will like. Can you help me decide?",
    "What items would {user} enjoy?",
    "Can you recommend something {user} will like?",
)
# Held out: never used in training, for measuring generalisation to unseen wording.
HISTORY_UNSEEN_TEMPLATE = "Here is what {user} has engaged with so far: {history}. Suggest what comes next."
ID_ONLY_UNSEEN_TEMPLATE = "Please pick items for {user} that match their taste."


def id_token(kind: str, level: int, code: int) -> str:
    """One ID token, e.g. ``id_token("user", 1, 128) == "<u1-128>"`` (level 1-based, code 0-based)."""
    return f"<{KINDS[kind]}{level}-{code}>"


def id_token_strings(kind: str, levels: int, codebook_size: int) -> list[str]:
    """All ``K * L`` tokens of one kind, level-major: position ``(level - 1) * L + code``."""
    return [id_token(kind, k, code) for k in range(1, levels + 1) for code in range(codebook_size)]


def entity_text(kind: str, codes: Sequence[int] | np.ndarray) -> str:
    """The K tokens of one user or item, written together: ``<v1-42><v2-12><v3-98>``."""
    return "".join(id_token(kind, k, int(code)) for k, code in enumerate(codes, start=1))


def recent_history(sequence: np.ndarray, history_len: int) -> np.ndarray:
    """The most recent ``history_len`` items of a time-ordered sequence, still in time order."""
    return sequence[len(sequence) - history_len :] if history_len > 0 else sequence[:0]


def history_codes(
    sequences: Sequence[np.ndarray], users: np.ndarray, item_codes: np.ndarray, history_len: int
) -> list[np.ndarray]:
    """Per user in ``users``, the codes ``(h, K)`` of their ``history_len`` most recent items (h <= H).

    Args:
        sequences: per user index, the time-ordered items the prompt may show (training items only).
        users: user indices of the batch.
        item_codes: ``(n_items, K)`` int tokens of every item.
        history_len: H.
    """
    return [item_codes[recent_history(sequences[int(u)], history_len)] for u in users]


def format_history(codes: np.ndarray, style: str = "paper") -> str:
    """The history part of a prompt from item codes ``(h, K)``.

    ``paper`` writes ``item_<v1-4><v2-9><v3-1>, item_...``; ``compact`` writes the token groups back to back
    (``<v1-4><v2-9><v3-1><v1-...``), about half the tokens: the level-1 token marks where an item starts.
    """
    if style == "paper":
        return ", ".join(f"item_{entity_text('item', row)}" for row in codes)
    if style == "compact":
        return "".join(entity_text("item", row) for row in codes)
    raise ConfigError(f"history style must be paper or compact, got {style!r}")


def build_prompts(
    user_codes: np.ndarray,
    histories: Sequence[np.ndarray] | None,
    mode: str = "eval",
    rng: np.random.Generator | None = None,
    style: str = "paper",
) -> list[str]:
    """Write one prompt per user.

    Args:
        user_codes: ``(B, K)`` int tokens of the users.
        histories: per user, item codes ``(h, K)`` in time order (see :func:`history_codes`); None for the
            user-ID-only family. A user with an empty history gets the ID-only template of the same mode.
        mode: ``train`` (a training paraphrase drawn per prompt with ``rng``), ``eval`` (the paper's wording)
            or ``unseen`` (the held-out template).
        rng: random generator for ``train``; required there so that runs are reproducible.
        style: history style, ``paper`` or ``compact``.

    Returns:
        ``B`` prompt strings.
    """
    if mode not in PROMPT_MODES:
        raise ConfigError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")
    if mode == "train" and rng is None:
        raise ValueError("build_prompts(mode='train') needs rng, a numpy Generator, to draw templates")
    if histories is not None and len(histories) != len(user_codes):
        raise ValueError(f"{len(user_codes)} users but {len(histories)} histories")
    prompts = []
    for i, codes in enumerate(user_codes):
        user = f"user_{entity_text('user', codes)}"
        history = None if histories is None or len(histories[i]) == 0 else histories[i]
        template = _template(history is not None, mode, rng)
        if history is None:
            prompts.append(template.format(user=user))
        else:
            prompts.append(template.format(user=user, history=format_history(history, style)))
    return prompts


def _template(with_history: bool, mode: str, rng: np.random.Generator | None) -> str:
    family = HISTORY_TEMPLATES if with_history else ID_ONLY_TEMPLATES
    if mode == "train":
        return family[int(rng.integers(len(family)))]
    if mode == "unseen":
        return HISTORY_UNSEEN_TEMPLATE if with_history else ID_ONLY_UNSEEN_TEMPLATE
    return family[0]


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Tokenize a batch with dynamic padding: every row is padded to the longest prompt of this batch only.

    Prompts are never truncated (that would cut off the question, or the last token a decoder pools): a prompt
    longer than ``max_length`` is an error that says to lower ``llm.history_len``.

    Args:
        tokenizer: a Hugging Face tokenizer that already holds the ID tokens.
        prompts: prompt strings.
        max_length: longest allowed prompt in tokens (usually the backbone's position limit); None = no check.
        pad_to_multiple_of: optionally round the padded length up (e.g. 8 for tensor cores on a GPU).

    Returns:
        ``{"input_ids": (B, T) int64, "attention_mask": (B, T) int64}`` torch tensors, T = longest prompt.
    """
    batch = tokenizer(
        list(prompts),
        padding="longest",
        truncation=False,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )
    if max_length is not None:
        longest = int(batch["attention_mask"].sum(dim=1).max()) if len(prompts) else 0
        if longest > max_length:
            raise ConfigError(
                f"a prompt has {longest} tokens but the backbone takes at most {max_length}; "
                "lower llm.history_len or use llm.history_style=compact"
            )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

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

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tokenrec.errors import ConfigError

USER_PREFIX, ITEM_PREFIX = "u", "v"
ID_TOKEN_PATTERN = re.compile(r"<([uv])(\d+)-(\d+)>")
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
    _check_prompt_arguments(user_codes, histories, mode, rng)
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


def _check_prompt_arguments(
    user_codes: np.ndarray, histories: Sequence[np.ndarray] | None, mode: str, rng: np.random.Generator | None
) -> None:
    if mode not in PROMPT_MODES:
        raise ConfigError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")
    if mode == "train" and rng is None:
        raise ValueError("prompts in mode 'train' need rng, a numpy Generator, to draw templates")
    if histories is not None and len(histories) != len(user_codes):
        raise ValueError(f"{len(user_codes)} users but {len(histories)} histories")


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


def select_rows(
    encoded: dict[str, torch.Tensor],
    rows: np.ndarray | slice,
    pad_to_multiple_of: int | None = None,
    padding_side: str = "right",
    longest: int | None = None,
) -> dict[str, torch.Tensor]:
    """Rows of an encoded batch, cropped to their own longest prompt (dynamic padding for a sub-batch).

    Args:
        encoded: ``{"input_ids": (B, T), "attention_mask": (B, T)}`` as :meth:`PromptEncoder.encode` returns.
        rows: the rows to keep (a numpy array, a slice, or an index tensor on the tensors' device).
        pad_to_multiple_of: optionally round the kept width up (e.g. 8 for tensor cores on a GPU).
        padding_side: ``right`` or ``left``, as the tokenizer pads.
        longest: the kept rows' longest prompt when the caller knows it (no device synchronisation here).
    """
    index = torch.as_tensor(rows) if isinstance(rows, np.ndarray) else rows
    ids, mask = encoded["input_ids"][index], encoded["attention_mask"][index]
    width = longest if longest is not None else (int(mask.sum(dim=1).max()) if len(mask) else 0)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    width = min(width, ids.shape[1])
    cut = slice(ids.shape[1] - width, None) if padding_side == "left" else slice(0, width)
    return {"input_ids": ids[:, cut], "attention_mask": mask[:, cut]}


class PromptEncoder:
    """Token ids of prompts assembled from template pieces tokenized once: no strings written or parsed.

    ``encode(user_codes, histories, mode, rng)`` returns exactly what
    ``tokenize_prompts(tokenizer, build_prompts(user_codes, histories, mode, rng, style))`` returns (same
    template draws from ``rng``), about ten times faster: on a GPU, writing and tokenizing prompt strings on
    the CPU would bound throughput long before the backbone does. Each ID token is one whole token, so a prompt
    is its template's text pieces (tokenized once) around the users' and items' ID token ids.

    Whether a tokenizer splits prompts this way is checked on construction for every template, by comparing
    the assembled ids with the tokenizer's own for one, two and three history items; a tokenizer that fails
    the check (a text piece tokenized differently next to different neighbours) is served by tokenizing
    the prompt strings instead, with the same result, only slower.

    Args:
        tokenizer: a Hugging Face tokenizer that already holds the ID tokens.
        style: history style, ``paper`` or ``compact``.
    """

    def __init__(self, tokenizer: Any, style: str = "paper") -> None:
        if style not in ("paper", "compact"):
            raise ConfigError(f"history style must be paper or compact, got {style!r}")
        self.tokenizer = tokenizer
        self.style = style
        self.padding_side = getattr(tokenizer, "padding_side", "right")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.token_ids = {kind: id_token_table(tokenizer, kind) for kind in KINDS}  # kind -> (K, L), -1 absent
        templates = (*HISTORY_TEMPLATES, HISTORY_UNSEEN_TEMPLATE, *ID_ONLY_TEMPLATES, ID_ONLY_UNSEEN_TEMPLATE)
        self.pieces: dict[str, tuple[np.ndarray, ...]] = {}
        if min(table.size for table in self.token_ids.values()) and (self.token_ids["user"] >= 0).all():
            for template in templates:
                pieces = self._split(template)
                if pieces is None:
                    self.pieces.clear()
                    break
                self.pieces[template] = pieces
        self.assembles = bool(self.pieces)  # False: strings are tokenized instead

    # -------------------------------------------------------------------------------- encoding

    def encode(
        self,
        user_codes: np.ndarray,
        histories: Sequence[np.ndarray] | None,
        mode: str = "eval",
        rng: np.random.Generator | None = None,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token ids of the prompts :func:`build_prompts` writes, padded to the longest one.

        Args: as :func:`build_prompts` (``user_codes`` ``(B, K)``, item-code ``histories``, ``mode``, ``rng``),
            and ``max_length`` as :func:`tokenize_prompts`.

        Returns:
            ``{"input_ids": (B, T) int64, "attention_mask": (B, T) int64}`` torch tensors.
        """
        user_codes = np.asarray(user_codes, dtype=np.int64).reshape(len(user_codes), -1)
        if not self.assembles:
            prompts = build_prompts(user_codes, histories, mode, rng, self.style)
            return tokenize_prompts(self.tokenizer, prompts, max_length)
        _check_prompt_arguments(user_codes, histories, mode, rng)
        lengths = np.zeros(len(user_codes), dtype=np.int64)
        if histories is not None:
            lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(user_codes))
        # one template per row, drawn exactly as build_prompts draws them (one draw per row, in order)
        templates = [_template(bool(n), mode, rng) for n in lengths]
        groups: dict[tuple[str, int], list[int]] = {}
        for row, (template, n) in enumerate(zip(templates, lengths, strict=True)):
            groups.setdefault((template, int(n)), []).append(row)
        blocks = []
        for (template, n), rows in groups.items():
            items = None
            if n:
                items = np.stack([np.asarray(histories[r], dtype=np.int64).reshape(n, -1) for r in rows])
            blocks.append((np.asarray(rows), self._assemble(template, user_codes[rows], items)))
        width = max((block.shape[1] for _, block in blocks), default=0)
        if max_length is not None and width > max_length:
            raise ConfigError(
                f"a prompt has {width} tokens but the backbone takes at most {max_length}; "
                "lower llm.history_len or use llm.history_style=compact"
            )
        ids = np.full((len(user_codes), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(user_codes), width), dtype=np.int64)
        for rows, block in blocks:
            cut = slice(width - block.shape[1], None) if self.padding_side == "left" else slice(0, block.shape[1])
            ids[rows, cut] = block
            mask[rows, cut] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def _assemble(self, template: str, user_codes: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """``(n, T)`` ids of ``n`` prompts of one template and one history length; items ``(n, h, K)``."""
        n = len(user_codes)
        users = self._lookup("user", user_codes)  # (n, K)
        if items is None:
            prefix, suffix = self.pieces[template]
            return np.concatenate([np.broadcast_to(prefix, (n, len(prefix))), users,
                                   np.broadcast_to(suffix, (n, len(suffix)))], axis=1)  # fmt: skip
        prefix, middle, separator, suffix = self.pieces[template]
        codes = self._lookup("item", items.reshape(-1, items.shape[2])).reshape(items.shape)  # (n, h, K)
        parts = np.concatenate([np.broadcast_to(separator, (*codes.shape[:2], len(separator))), codes], axis=2)
        history = parts.reshape(n, -1)[:, len(separator) :]  # item, separator, item, ...
        return np.concatenate([np.broadcast_to(prefix, (n, len(prefix))), users,
                               np.broadcast_to(middle, (n, len(middle))), history,
                               np.broadcast_to(suffix, (n, len(suffix)))], axis=1)  # fmt: skip

    def _lookup(self, kind: str, codes: np.ndarray) -> np.ndarray:
        """Token ids ``(n, K)`` of ``kind`` codes ``(n, K)``; a code without a token is an error."""
        table = self.token_ids[kind]
        levels = codes.shape[1]
        if levels > table.shape[0] or (len(codes) and (codes.min() < 0 or codes.max() >= table.shape[1])):
            raise ConfigError(
                f"{kind} codes with {levels} levels and values up to {int(codes.max()) if len(codes) else 0} "
                f"have no ID tokens in this tokenizer ({table.shape[0]} levels x {table.shape[1]} codes); the "
                "token tables and the LLM come from different runs: rerun `tokenrec train-llm`"
            )
        ids = table[np.arange(levels), codes]  # (n, K)
        if len(ids) and ids.min() < 0:
            raise ConfigError(f"some {kind} ID tokens are missing from the tokenizer; rerun `tokenrec train-llm`")
        return ids

    # -------------------------------------------------------------------------------- template pieces

    def _split(self, template: str) -> tuple[np.ndarray, ...] | None:
        """The template's text pieces as token ids, or None when assembling would differ from tokenizing."""
        levels = self.token_ids["user"].shape[0]
        size = min(table.shape[1] for table in self.token_ids.values())
        user = np.arange(levels)[None, :] % size  # (1, K)
        with_history = "{history}" in template
        if not with_history:
            probe = self._tokenize(template, user, None)
            found = np.flatnonzero(np.isin(probe, self.token_ids["user"]))
            if len(found) != levels:
                return None
            pieces: tuple[np.ndarray, ...] = (probe[: found[0]], probe[found[-1] + 1 :])
            checks = [None]
        else:
            items = (np.arange(2 * levels).reshape(2, levels) + 3) % size  # two distinct items
            probe = self._tokenize(template, user, items)
            found_user = np.flatnonzero(np.isin(probe, self.token_ids["user"]))
            found_items = np.flatnonzero(np.isin(probe, self.token_ids["item"]))
            if len(found_user) != levels or len(found_items) != 2 * levels:
                return None
            first, second = found_items[0], found_items[levels]
            pieces = (probe[: found_user[0]], probe[found_user[-1] + 1 : first],
                      probe[first + levels : second], probe[second + levels :])  # fmt: skip
            checks = [(np.arange(h * levels).reshape(h, levels) * 7 + 1) % size for h in (1, 2, 3)]
        self.pieces[template] = pieces
        for items in checks:
            expected = self._tokenize(template, user, items)
            got = self._assemble(template, user, None if items is None else items[None])[0]
            if not np.array_equal(expected, got):
                return None
        return pieces

    def _tokenize(self, template: str, user: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        fields = {"user": f"user_{entity_text('user', user[0])}"}
        if items is not None:
            fields["history"] = format_history(items, self.style)
        return np.asarray(self.tokenizer(template.format(**fields))["input_ids"], dtype=np.int64)


def id_token_table(tokenizer: Any, kind: str) -> np.ndarray:
    """``(K, L)`` ids of ``kind``'s ID tokens in ``tokenizer`` (row = level - 1, column = code; -1 = absent)."""
    found = []
    for token, token_id in tokenizer.get_added_vocab().items():
        match = ID_TOKEN_PATTERN.fullmatch(token)
        if match and match.group(1) == KINDS[kind]:
            found.append((int(match.group(2)) - 1, int(match.group(3)), token_id))
    if not found:
        return np.full((0, 0), -1, dtype=np.int64)
    levels, codes, ids = (np.array(column, dtype=np.int64) for column in zip(*found, strict=True))
    table = np.full((levels.max() + 1, codes.max() + 1), -1, dtype=np.int64)
    table[levels, codes] = ids
    return table

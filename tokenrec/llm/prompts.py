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
# How a model reads a prompt: "pooled" pools the whole prompt into one state (:meth:`PromptEncoder.encode`);
# "causal" reads the history template cut after its history under a causal mask, one state per position, and
# serves from the last one (:meth:`PromptEncoder.encode_causal`). A model is served as it was trained.
PROMPT_LAYOUTS = ("pooled", "causal")


def layout_for(training: str) -> str:
    """The prompt layout of a model trained with ``llm.training`` = ``training`` (causal or sampled)."""
    return "causal" if training == "causal" else "pooled"

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
    return sequence[max(0, len(sequence) - history_len) :] if history_len > 0 else sequence[:0]


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
    layout: str = "pooled",
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
        layout: ``pooled``, or ``causal``: the history template cut after the history, as
            :meth:`PromptEncoder.encode_causal` assembles it (``histories`` required; an empty one leaves the
            prefix alone).

    Returns:
        ``B`` prompt strings.
    """
    _check_prompt_arguments(user_codes, histories, mode, rng)
    if layout == "causal":
        return [_causal_text(codes, histories[i], _template(True, mode, rng), style)
                for i, codes in enumerate(user_codes)]  # fmt: skip
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


def _causal_text(user_codes: np.ndarray, history: np.ndarray, template: str, style: str) -> str:
    head = template.split("{history}")[0].format(user=f"user_{entity_text('user', user_codes)}")
    return head + (format_history(history, style) if len(history) else "")


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
    out = {"input_ids": ids[:, cut], "attention_mask": mask[:, cut]}
    if "blocks" in encoded:  # the causal layout (always right-padded): block ids crop like the ids
        out["blocks"] = encoded["blocks"][index][:, cut]
        out["ends"] = encoded["ends"][index]
    return out


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
        # per history template, the middle tokens that belong to the first item in the causal layout
        self.causal_leads: dict[str, int] = {}
        if self.assembles:
            for template in (*HISTORY_TEMPLATES, HISTORY_UNSEEN_TEMPLATE):
                lead = self._causal_lead(template)
                if lead is None:
                    self.causal_leads.clear()
                    break
                self.causal_leads[template] = lead

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

    def encode_causal(
        self,
        user_codes: np.ndarray,
        histories: Sequence[np.ndarray],
        mode: str = "eval",
        rng: np.random.Generator | None = None,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token ids of history prompts in the *causal layout*, with where each history position ends.

        A causal prompt is a history template cut after its history: ``<prefix with the user's ID tokens>
        item_1 ... item_h`` (no closing question), so that the state after item ``t`` can be read under a
        causal mask without seeing items ``> t``. Position 0 is the prefix alone (the user's ID tokens, no
        history: the causal form of an ID-only prompt); position ``t`` ends at item ``t``'s last ID token.
        The template is drawn per row from the history family exactly as :meth:`encode` draws it, even for
        an empty history (then the prompt is the prefix alone).

        Args: as :meth:`encode`; ``histories`` holds per row the codes ``(h, K)`` of the items shown.

        Returns:
            ``input_ids``, ``attention_mask`` and ``blocks`` ``(B, T)`` (``blocks``: 0 for the prefix, ``t``
            for the tokens of item ``t`` with the separator before it, -1 for padding; prompts are
            right-padded) and ``ends`` ``(B, P)`` with ``P = 1 + longest history``: ``ends[b, t]`` is the
            index of the last token of position ``t``, -1 where row ``b`` has no position ``t``.

        Raises:
            ConfigError: the tokenizer cannot assemble prompts from pieces (so token positions are unknown).
        """
        if not self.causal_leads:
            raise ConfigError(
                "llm.training=causal needs a tokenizer that keeps the template text and the ID tokens apart "
                "(checked when prompts are assembled); this one does not: use llm.training=sampled"
            )
        if self.padding_side != "right":
            raise ConfigError("the causal prompt layout needs right padding")
        user_codes = np.asarray(user_codes, dtype=np.int64).reshape(len(user_codes), -1)
        _check_prompt_arguments(user_codes, histories, mode, rng)
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(user_codes))
        templates = [_template(True, mode, rng) for _ in lengths]
        groups: dict[tuple[str, int], list[int]] = {}
        for row, (template, n) in enumerate(zip(templates, lengths, strict=True)):
            groups.setdefault((template, int(n)), []).append(row)
        parts = []
        for (template, n), rows in groups.items():
            items = None
            if n:
                items = np.stack([np.asarray(histories[r], dtype=np.int64).reshape(n, -1) for r in rows])
            parts.append((np.asarray(rows), *self._assemble_causal(template, user_codes[rows], items)))
        width = max((ids.shape[1] for _, ids, _, _ in parts), default=0)
        if max_length is not None and width > max_length:
            raise ConfigError(
                f"a prompt has {width} tokens but the backbone takes at most {max_length}; "
                "lower llm.history_len or use llm.history_style=compact"
            )
        batch = len(user_codes)
        ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        blocks = np.full((batch, width), -1, dtype=np.int64)
        ends = np.full((batch, 1 + int(lengths.max(initial=0))), -1, dtype=np.int64)
        for rows, block_ids, block, row_ends in parts:
            ids[rows, : block_ids.shape[1]] = block_ids
            mask[rows, : block_ids.shape[1]] = 1
            blocks[rows, : len(block)] = block
            ends[rows, : len(row_ends)] = row_ends
        return {name: torch.from_numpy(value) for name, value in
                (("input_ids", ids), ("attention_mask", mask), ("blocks", blocks), ("ends", ends))}  # fmt: skip

    def _assemble_causal(
        self, template: str, user_codes: np.ndarray, items: np.ndarray | None, lead: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Causal ids ``(r, T)``, block ids ``(T,)`` and position ends ``(1 + h,)`` of ``r`` prompts of one
        template and history length; ``items`` ``(r, h, K)`` or None.

        The last ``lead`` tokens of the template's middle piece (text every item carries, "item_" in the paper
        style) go to the first item's block, so that the prefix alone reads as the template cut before its
        history (found and checked on construction, :attr:`causal_leads`).
        """
        prefix, middle, separator, _ = self.pieces[template]
        lead = self.causal_leads[template] if lead is None else lead
        core = middle[: len(middle) - lead]
        levels = user_codes.shape[1]
        users = self._lookup("user", user_codes)  # (r, K)
        rows = len(user_codes)
        ids = np.concatenate([np.broadcast_to(prefix, (rows, len(prefix))), users,
                              np.broadcast_to(core, (rows, len(core)))], axis=1)  # fmt: skip
        blocks = np.zeros(ids.shape[1], dtype=np.int64)
        step, cut = len(separator) + levels, len(separator) - lead  # tokens per item; the first has step - cut
        n = 0 if items is None else items.shape[1]
        last = ids.shape[1] - 1
        ends = np.array([last] + [last + step - cut + (t - 1) * step for t in range(1, n + 1)], dtype=np.int64)
        if n:
            codes = self._lookup("item", items.reshape(-1, items.shape[2])).reshape(items.shape)  # (r, n, K)
            body = np.concatenate(
                [np.broadcast_to(separator, (rows, n, len(separator))), codes], axis=2
            )  # (r, n, step): separator + codes
            flat = body.reshape(rows, -1)[:, cut:]  # the first item keeps only the separator's last `lead`
            ids = np.concatenate([ids, flat], axis=1)
            blocks = np.concatenate([blocks, np.repeat(np.arange(1, n + 1), step)[cut:]])
        return ids, blocks, ends

    def _causal_lead(self, template: str) -> int | None:
        """How many middle tokens belong to the first item's block, or None when no choice reproduces the
        tokenizer's own ids of the cut template for 0 to 3 history items."""
        levels = self.token_ids["user"].shape[0]
        size = min(table.shape[1] for table in self.token_ids.values())
        user = np.arange(levels)[None, :] % size  # (1, K)
        specials = set(getattr(self.tokenizer, "all_special_ids", []))
        expected = []
        for h in range(4):
            items = (np.arange(h * levels).reshape(h, levels) * 5 + 2) % size
            text = _causal_text(user[0], items, template, self.style)
            ids = list(self.tokenizer(text)["input_ids"])
            while ids and ids[-1] in specials:  # the closing special tokens belong to the cut-off suffix
                ids.pop()
            expected.append((items, ids))
        middle, separator = self.pieces[template][1], self.pieces[template][2]
        for lead in range(min(len(middle), len(separator)) + 1):
            if lead and not np.array_equal(middle[len(middle) - lead :], separator[len(separator) - lead :]):
                continue
            assembled = (self._assemble_causal(template, user, items[None] if len(items) else None, lead)[0][0]
                         for items, _ in expected)  # fmt: skip
            if all(got.tolist() == ids for got, (_, ids) in zip(assembled, expected, strict=True)):
                return lead
        return None

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

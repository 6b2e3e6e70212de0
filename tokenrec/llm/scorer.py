"""TokenRec inference: prompts for users -> LLM4Rec -> preference vectors -> top-K items from the item index.

TokenRec (Qu et al., arXiv 2406.10450), generative retrieval: one forward pass of the fine-tuned backbone per
user and one cosine search over the GNN item embeddings; no decoding. Used by model selection during training,
by the ``evaluate`` stage and by batch inference.

Prompt variants (PAPER.md sections 2 and 5):
    ``full``           the history prompt (the user's H most recent items, time order) in the paper's wording;
    ``id_only``        the user-ID-only prompt;
    ``unseen_prompt``  the history prompt in a wording that training never used.

Scoring: the top-K items by cosine similarity to the projected vector (the paper). Two options of ours, off by
default: ``retrieval.normalize_items: false`` lets the item norms rank too, and ``retrieval.user_token_weight``
adds the user's vector decoded from its own ID tokens by the user tokenizer to the (unit) LLM4Rec vector.

Speed: prompts are assembled as token ids (:class:`tokenrec.llm.prompts.PromptEncoder`, the same ids as
tokenizing the prompt strings), sorted by length before batching, so a batch pads to nearly its own length
(dynamic padding, never to a fixed 512); the forward passes run under ``inference_mode``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from tqdm.auto import tqdm

from tokenrec.artifacts import load_run_tables, load_tokenizer
from tokenrec.config import PROMPT_VARIANTS, Config, LlmConfig, RetrievalConfig
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import ConfigError, InputError
from tokenrec.evaluation import metrics
from tokenrec.evaluation.protocol import SeenItems, evaluate_split
from tokenrec.llm.backbone import add_id_tokens, load_backbone
from tokenrec.llm.prompts import PROMPT_LAYOUTS, PromptEncoder, build_prompts, history_codes, select_rows
from tokenrec.models.llm4rec import LLM4Rec
from tokenrec.models.quantizer import Tokenizer
from tokenrec.run_folder import RunFolder
from tokenrec.serving.retrieval import ItemIndex
from tokenrec.storage import read_json

log = logging.getLogger(__name__)

# evaluation model name -> prompt variant (DESIGN.md, "Machine-readable results")
EVAL_MODELS = {"tokenrec": "full", "tokenrec_id_only": "id_only", "tokenrec_unseen_prompt": "unseen_prompt"}
PROMPT_MODE = {"full": "eval", "id_only": "eval", "unseen_prompt": "unseen"}


def check_variant(variant: str) -> None:
    """Raise a ConfigError unless ``variant`` is a prompt variant."""
    if variant not in PROMPT_VARIANTS:
        raise ConfigError(f"prompt variant must be one of {', '.join(PROMPT_VARIANTS)}, got {variant!r}")


def variant_prompts(
    variant: str,
    user_codes: np.ndarray,
    histories: Sequence[np.ndarray],
    style: str = "paper",
    layout: str = "pooled",
) -> list[str]:
    """The evaluation prompts of ``variant`` for users with ``user_codes`` ``(B, K)`` and item-code histories."""
    check_variant(variant)
    shown = None if variant == "id_only" else histories
    if layout == "causal" and shown is None:
        shown = [h[:0] for h in histories]  # the causal ID-only prompt: the prefix alone
    return build_prompts(user_codes, shown, mode=PROMPT_MODE[variant], style=style, layout=layout)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type, or nothing (fp32) when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class TokenRecScorer:
    """A trained LLM4Rec with its token tables and item index: users -> vectors -> top-K items.

    Args:
        model: the trained model, on ``device`` (each pass runs in eval mode and restores the mode after).
        user_codes: ``(n_users, K)`` int tokens of every user.
        item_codes: ``(n_items, K)`` int tokens of every item.
        item_vectors: ``(n_items, d)`` GNN item embeddings, the retrieval targets.
        history_len: H, items shown in a history prompt.
        history_style: ``paper`` or ``compact``.
        batch_size: prompts per forward pass.
        device: where the model runs; default: where its parameters are.
        retrieval: index settings (exact ``flat`` by default).
        amp_dtype: optional autocast dtype for the forward passes (bf16 on a GPU).
        progress: show progress bars.
        user_decoder: the trained user tokenizer; required when ``retrieval.user_token_weight`` > 0, whose
            decoded user vectors ``(U, d)`` are then added to the LLM4Rec vectors.
        layout: how the model reads prompts, as it was trained (:data:`tokenrec.llm.prompts.PROMPT_LAYOUTS`):
            ``pooled`` (the whole prompt pooled) or ``causal`` (the history template cut after the history,
            read under the causal mask, the state after the last item; ``id_only``: after the prefix).
    """

    def __init__(
        self,
        model: LLM4Rec,
        user_codes: np.ndarray,
        item_codes: np.ndarray,
        item_vectors: np.ndarray,
        history_len: int,
        history_style: str = "paper",
        batch_size: int = 128,
        device: torch.device | None = None,
        retrieval: RetrievalConfig | None = None,
        amp_dtype: torch.dtype | None = None,
        progress: bool = False,
        user_decoder: Tokenizer | None = None,
        layout: str = "pooled",
    ) -> None:
        if layout not in PROMPT_LAYOUTS:
            raise ConfigError(f"prompt layout must be one of {', '.join(PROMPT_LAYOUTS)}, got {layout!r}")
        if len(item_codes) != len(item_vectors):
            raise ValueError(f"{len(item_codes)} item token rows but {len(item_vectors)} item vectors")
        self.user_token_weight = retrieval.user_token_weight if retrieval is not None else 0.0
        if self.user_token_weight and user_decoder is None:
            raise ValueError("retrieval.user_token_weight > 0 needs the user tokenizer (user_decoder)")
        self.model = model
        self.device = device or next(model.parameters()).device
        self.user_codes = np.asarray(user_codes)
        self.item_codes = np.asarray(item_codes)
        self.history_len = history_len
        self.history_style = history_style
        self.layout = layout
        self.batch_size = batch_size
        self.amp_dtype = amp_dtype
        self.progress = progress
        self.index = ItemIndex.build(np.asarray(item_vectors, dtype=np.float32), retrieval)
        self.user_decoder = user_decoder.to(self.device).eval() if self.user_token_weight else None
        self.encoder = PromptEncoder(model.backbone.tokenizer, history_style)
        # on a GPU the exact search runs there too (faiss's CPU post-processing would bound throughput)
        self.search_device = self.device if self.device.type != "cpu" else None

    def prompts(self, users: np.ndarray, sequences: Sequence[np.ndarray], variant: str = "full") -> list[str]:
        """The prompt strings of ``users`` (for people; scoring assembles token ids directly)."""
        histories = history_codes(sequences, users, self.item_codes, self.history_len)
        return variant_prompts(variant, self.user_codes[users], histories, self.history_style, self.layout)

    @torch.inference_mode()
    def embed_codes(
        self, user_codes: np.ndarray, histories: Sequence[np.ndarray], variant: str = "full"
    ) -> np.ndarray:
        """Preference vectors ``(U, d)`` float32 of users given by their codes ``(U, K)`` and item-code histories.

        Args:
            user_codes: ``(U, K)`` the users' ID tokens.
            histories: per user, the codes ``(h, K)`` of the items the prompt shows (see ``history_codes``).
            variant: a prompt variant, ``full``, ``id_only`` or ``unseen_prompt``.
        """
        check_variant(variant)
        was_training = self.model.training
        self.model.eval()
        shown = None if variant == "id_only" else histories
        limit = self.model.backbone.max_length
        if self.layout == "causal":
            shown = [h[:0] for h in histories] if shown is None else shown  # id_only: the prefix alone
            encoded = self.encoder.encode_causal(user_codes, shown, PROMPT_MODE[variant], None, limit)
            lengths_shown = np.fromiter((len(h) for h in shown), dtype=np.int64, count=len(shown))
            encoded["ends"] = encoded["ends"].gather(1, torch.from_numpy(lengths_shown)[:, None])  # (U, 1): last
        else:
            encoded = self.encoder.encode(user_codes, shown, PROMPT_MODE[variant], None, limit)
        lengths = encoded["attention_mask"].sum(dim=1).numpy()  # (U,)
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch
        # everything on the device up front: the loop below never waits for the GPU, which keeps it busy
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        order_on_device = torch.as_tensor(order, device=self.device)
        out = torch.zeros((len(order), self.model.out_dim), dtype=torch.float32, device=self.device)
        multiple = 8 if self.device.type == "cuda" else None
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="llm4rec", unit="batch", disable=not self.progress, leave=False):
            rows = order_on_device[start : start + self.batch_size]
            longest = int(lengths[order[start : start + self.batch_size]].max())
            batch = select_rows(encoded, rows, multiple, self.encoder.padding_side, longest)
            with autocast(self.device, self.amp_dtype):
                if self.layout == "causal":
                    z = self.model(batch["input_ids"], batch["attention_mask"], batch["blocks"], batch["ends"])[:, 0]
                else:
                    z = self.model(batch["input_ids"], batch["attention_mask"])  # (B, d)
            out[rows] = z.float()
        self.model.train(was_training)
        if self.user_decoder is not None:  # unit LLM4Rec vector + a * unit decoded user vector
            levels = self.user_decoder.num_levels  # a disambiguation column after them is not the tokenizer's
            codes = torch.as_tensor(np.asarray(user_codes)[:, :levels], dtype=torch.long, device=self.device)
            decoded = self.user_decoder.decode_codes(codes).float()  # (U, d)
            out = F.normalize(out, dim=-1) + self.user_token_weight * F.normalize(decoded, dim=-1)
        return out.cpu().numpy()

    def embed(self, users: np.ndarray, sequences: Sequence[np.ndarray], variant: str = "full") -> np.ndarray:
        """Preference vectors ``(U, d)`` of ``users``."""
        users = np.asarray(users)
        histories = history_codes(sequences, users, self.item_codes, self.history_len)
        return self.embed_codes(self.user_codes[users], histories, variant)

    def recommend(
        self,
        users: np.ndarray,
        sequences: Sequence[np.ndarray],
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        variant: str = "full",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per user, each ``(U, k)``, never one of the user's ``exclude`` items."""
        z = self.embed(users, sequences, variant)
        return self.index.search(z, k, exclude=exclude, device=self.search_device)

    # ------------------------------------------------------------------------------------- from a run

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike[str],
        cfg: Config,
        device: torch.device | None = None,
        tables: dict[str, np.ndarray] | None = None,
    ) -> TokenRecScorer:
        """Load the trained model of ``run_dir/llm`` with the run's token tables and GNN item embeddings.

        Args:
            run_dir: a run folder holding ``gnn/``, ``tokenizer/`` and ``llm/``.
            cfg: settings for batching, retrieval and the device (``llm``, ``retrieval``, ``train``).
            device: overrides ``cfg.train.device``.
            tables: optional replacements ``user_codes``, ``item_codes``, ``item_vectors`` (e.g. extended
                with users and items that are new since training); missing keys come from the run.
        """
        from tokenrec.training.device import autocast_dtype, pick_device

        run = RunFolder(run_dir)
        manifest_path = run.llm_manifest
        if not manifest_path.is_file():
            raise InputError(manifest_path, "no trained LLM4Rec here", "Run `tokenrec train-llm` first.")
        manifest = read_json(manifest_path)
        device = device or pick_device(cfg.train.device)
        found = {**load_run_tables(run, manifest["item_vectors"]), **(tables or {})}
        user_decoder = load_tokenizer(run, "user") if cfg.retrieval.user_token_weight else None
        backbone_cfg = LlmConfig(backbone=str(run.backbone), dtype=cfg.llm.dtype)
        backbone = load_backbone(backbone_cfg, run.llm)
        add_id_tokens(backbone, manifest["levels"], manifest["codebook_size"])  # already present: no change
        model = LLM4Rec(backbone, manifest["out_dim"], manifest["proj_hidden"])
        model.projection.load_state_dict(load_tensors(run.projection.read_bytes()))
        model.to(device).eval()
        return cls(
            model,
            found["user_codes"],
            found["item_codes"],
            found["item_vectors"],
            manifest["history_len"],
            manifest["history_style"],
            cfg.llm.eval_batch_size,
            device,
            cfg.retrieval,
            autocast_dtype(device, cfg.llm.precision),
            cfg.train.progress,
            user_decoder,
            manifest.get("prompt_layout", "pooled"),  # models from before causal training were pooled
        )


class TokenRecRanker:
    """:class:`tokenrec.evaluation.protocol.TopKRanker` over a snapshot: prompts show everything before the split."""

    def __init__(self, scorer: TokenRecScorer, data: InteractionData, variant: str = "full") -> None:
        self.scorer = scorer
        self.data = data
        self.variant = variant
        self._sequences: dict[int, list[np.ndarray]] = {}

    def sequences(self, split: int) -> list[np.ndarray]:
        if split not in self._sequences:
            self._sequences[split] = self.data.sequences_before(split)
        return self._sequences[split]

    def topk(self, users: np.ndarray, split: int, k: int, seen: list[np.ndarray]) -> np.ndarray:
        _, ids = self.scorer.recommend(np.asarray(users), self.sequences(split), k, seen, self.variant)
        return ids  # (B, k)


def ranker_for(cfg: Config, data: InteractionData, run_dir: Path, name: str = "tokenrec") -> Any:
    """The ranker of evaluation model ``name`` (a key of :data:`EVAL_MODELS`) for the ``evaluate`` stage."""
    return TokenRecRanker(TokenRecScorer.from_run(run_dir, cfg), data, EVAL_MODELS[name])


def evaluate_ranker(
    ranker: TokenRecRanker,
    data: InteractionData,
    split: int,
    ks: list[int] | tuple[int, ...],
    batch_size: int,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """HR@K / NDCG@K of ``ranker`` on ``split`` (seen items excluded), its users split across the ranks.

    Args:
        ranker: the ranker to score.
        data: the snapshot.
        split: ``InteractionData.VALID`` or ``InteractionData.TEST``.
        ks: metric cut-offs.
        batch_size: users per top-K call.
        rank, world: this process's share of the users (data-parallel); every rank returns the same numbers,
            because the ranks of all targets are gathered before averaging.
    """
    if world == 1:
        return evaluate_split(data, ranker, split, ks, batch_size)
    users, targets = data.targets(split)
    seen = SeenItems(data, split)
    mine = np.arange(rank, len(users), world)
    found = []
    for start in range(0, len(mine), batch_size):
        rows = mine[start : start + batch_size]
        lists = ranker.topk(users[rows], split, max(ks), [seen.of(u) for u in users[rows]])
        found.append(metrics.ranks_from_topk(lists, targets[rows]))
    local = torch.cat(found) if found else torch.zeros(0, dtype=torch.float64)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local.numpy())
    return metrics.metrics_from_ranks(np.concatenate(gathered), ks)

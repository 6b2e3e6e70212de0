"""Stage ``train-llm``: GNN embeddings + ID tokens + interactions -> fine-tuned LLM4Rec (PAPER.md section 2).

Reads ``run_dir/gnn/embeddings.safetensors`` (the item table ``gnn.output`` names is the frozen target and the
retrieval index), ``run_dir/tokenizer/tokens.safetensors`` (user and item tokens; ``tokenizer.json`` and the
tokenizer weights when ``llm.token_init`` is ``codeword``), loads ``llm.backbone``, adds the ID tokens, and
fine-tunes with :func:`tokenrec.training.llm.train_llm`. Writes into ``run_dir/llm/``:

- ``backbone/``: the fine-tuned backbone (``save_pretrained``, safetensors), its text tokenizer with the ID
  tokens, and ``backbone.json`` (architecture, pooling);
- ``projection.safetensors``: the projection MLP;
- ``llm.json``: what rebuilds the model and its prompts (:meth:`TokenRecScorer.from_run`);
- ``history.json``: per epoch loss, cosines, samples/s and validation metrics;
- ``metrics.json``: validation and test HR/NDCG@K of the selected epoch per ``llm.report_variants``;
- ``training_curve.png``, ``config.yaml``, and ``checkpoints/`` (a rerun resumes from them).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is started here (NCCL on GPUs, gloo on CPUs) and
training is data-parallel; rank 0 writes the files.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save

from tokenrec.artifacts import load_run_tables, load_tokenizer
from tokenrec.config import Config, save_config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import InputError
from tokenrec.llm.backbone import IdVocabulary, add_id_tokens, backbone_cache_dir, load_backbone
from tokenrec.llm.prompts import layout_for
from tokenrec.llm.scorer import EVAL_MODELS, TokenRecRanker, TokenRecScorer, evaluate_ranker
from tokenrec.models.llm4rec import LLM4Rec
from tokenrec.models.quantizer import Tokenizer
from tokenrec.run_folder import ENTITIES, LLM, RunFolder, gnn_table
from tokenrec.storage import atomic_write_bytes, atomic_write_json, read_json
from tokenrec.training.device import autocast_dtype, pick_device, seed_everything
from tokenrec.training.llm import Ranks, train_llm

log = logging.getLogger(__name__)

VARIANT_MODEL = {variant: name for name, variant in EVAL_MODELS.items()}


def run(cfg: Config, snapshot: Path, run_dir: Path) -> dict[str, Any]:
    """Fine-tune LLM4Rec for the run in ``run_dir`` and write ``run_dir/llm``.

    Args:
        cfg: the resolved configuration (``llm``, ``train``, ``gnn.output``, ``eval.ks`` are used).
        snapshot: the interactions snapshot folder.
        run_dir: the run folder holding ``gnn/`` and ``tokenizer/``.

    Returns:
        A summary: output folder, selected epoch, epochs, training samples/s and the test metrics.

    Raises:
        InputError: the GNN or tokenizer outputs are missing or do not match the snapshot.
    """
    run = RunFolder(run_dir)
    out = run.llm
    ranks, device = start_distributed(cfg.train.device)
    if ranks.main:
        save_config(cfg, out)
    inputs = prepare(cfg, snapshot, run.root)
    model, vocab, data, tables = inputs.model, inputs.vocab, inputs.data, inputs.tables
    item_key, levels, size = inputs.item_key, inputs.levels, inputs.size
    log.info("train-llm on %s: %s, %d ID tokens, world %d", snapshot, data.summary(), 2 * levels * size, ranks.world)
    user_decoder = inputs.user_decoder
    result = train_llm(
        model, vocab, data, tables, cfg.llm, cfg.train, device, cfg.eval.ks, out, ranks, cfg.retrieval, user_decoder
    )

    scorer = TokenRecScorer(
        model,
        tables["user_codes"],
        tables["item_codes"],
        tables["item_vectors"],
        cfg.llm.history_len,
        cfg.llm.history_style,
        cfg.llm.eval_batch_size,
        device,
        cfg.retrieval,
        autocast_dtype(device, cfg.llm.precision),
        cfg.train.progress and ranks.main,
        user_decoder,
        layout_for(cfg.llm.training),
    )
    scores: dict[str, Any] = {}
    for variant in cfg.llm.report_variants:
        ranker = TokenRecRanker(scorer, data, variant)
        scores[VARIANT_MODEL[variant]] = {
            split_name: evaluate_ranker(
                ranker, data, split, cfg.eval.ks, cfg.llm.eval_batch_size, ranks.rank, ranks.world
            )
            for split, split_name in ((data.VALID, "valid"), (data.TEST, "test"))
        }
    trained = [h for h in result.history if h.get("samples")]
    speed = sum(h["samples"] for h in trained) / max(1e-9, sum(h["seconds"] for h in trained))
    if ranks.main:
        save_model(model, vocab, cfg, run, item_key, result.best_epoch, levels, size)
        metrics = {
            **scores,
            "best_epoch": result.best_epoch,
            "epochs": result.epochs,
            "train_samples_per_second": speed,
            "dataset": data.name,
            "world_size": ranks.world,
        }
        atomic_write_json(run.metrics(LLM), metrics)
        atomic_write_bytes(run.training_curve, training_curve_png(result.history))
    first = next(iter(scores.values()), {})
    log.info("train-llm: best epoch %d of %d, test %s", result.best_epoch, result.epochs, first.get("test"))
    return {
        "out": str(out),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "train_samples_per_second": speed,
        "test": {name: value["test"] for name, value in scores.items()},
    }


@dataclass
class LlmInputs:
    """What fine-tuning starts from: the fresh model with its ID tokens, the snapshot and the run's tables."""

    model: LLM4Rec
    vocab: IdVocabulary
    data: InteractionData
    tables: dict[str, np.ndarray]  # user_codes (n_users, K), item_codes (n_items, K), item_vectors (n_items, d)
    item_key: str  # the GNN table the targets come from (item or item_ego)
    levels: int  # K (a disambiguation level included)
    size: int  # L, codes per level
    user_decoder: Tokenizer | None  # the user tokenizer, loaded only when retrieval.user_token_weight > 0


def prepare(cfg: Config, snapshot: Path, run_dir: Path) -> LlmInputs:
    """Load the snapshot and the run's GNN and token tables, and build the backbone with its ID tokens.

    Raises:
        InputError: the GNN or tokenizer outputs are missing or do not match the snapshot.
    """
    run = RunFolder(run_dir)
    data = InteractionData.load(snapshot)
    item_key = gnn_table("item", cfg.gnn.output)
    tables = load_run_tables(run, item_key)
    check_tables(tables, data, run)
    levels = int(max(tables["user_codes"].shape[1], tables["item_codes"].shape[1]))
    manifest_path = run.tokenizer_manifest
    if not manifest_path.is_file():
        raise InputError(manifest_path, "no complete tokenizer here", "Run `tokenrec train-tokenizer` first.")
    manifest = read_json(manifest_path)
    size = max(
        [int(spec["codebook_size"]) for spec in manifest["entities"].values()]
        + [int(tables[f"{kind}_codes"].max()) + 1 for kind in ENTITIES]
    )
    codebooks = None
    if cfg.llm.token_init == "codeword":
        codebooks = {kind: tokenizer_codebooks(run, kind, levels, size, cfg.train.seed) for kind in ENTITIES}

    seed_everything(cfg.train.seed)
    backbone = load_backbone(cfg.llm, backbone_cache_dir(cfg))
    vocab = add_id_tokens(
        backbone, levels, size, cfg.llm.token_init, cfg.llm.token_init_noise, cfg.train.seed, codebooks
    )
    dim = int(tables["item_vectors"].shape[1])
    model = LLM4Rec(backbone, dim, cfg.llm.proj_hidden, cfg.llm.proj_dropout)
    user_decoder = load_tokenizer(run, "user") if cfg.retrieval.user_token_weight else None
    return LlmInputs(model, vocab, data, tables, item_key, levels, size, user_decoder)


def start_distributed(preference: str) -> tuple[Ranks, torch.device]:
    """This process's rank and device; joins the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), pick_device(preference)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and preference != "cpu":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), world, device, backend)
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def check_tables(tables: dict[str, np.ndarray], data: InteractionData, run: RunFolder) -> None:
    """The token table and GNN embeddings must cover every user and item of the snapshot."""
    for kind, count in (("user", data.n_users), ("item", data.n_items)):
        rows = len(tables[f"{kind}_codes"])
        if rows != count:
            raise InputError(
                run.tokens,
                f"{rows} {kind} token rows but the snapshot has {count} {kind}s",
                "Train the GNN and the tokenizer on this snapshot (same run folder) first.",
            )


def tokenizer_codebooks(run: RunFolder, kind: str, levels: int, size: int, seed: int) -> torch.Tensor:
    """The ``kind`` tokenizer's codewords per level, ``(levels, size, d_c)``, for ``llm.token_init=codeword``.

    Levels or codes the tokenizer does not have (the disambiguation level) get random codewords with the
    spread of the real ones.
    """
    tokenizer = load_tokenizer(run, kind)
    every_code = torch.arange(tokenizer.codebook_size).unsqueeze(1).expand(-1, tokenizer.num_levels)  # (L, K)
    books = tokenizer.lookup(every_code).detach().float().transpose(0, 1)  # (K, L, d_c)
    generator = torch.Generator().manual_seed(seed)
    full = books.std() * torch.randn(levels, size, books.shape[-1], generator=generator) + books.mean()
    full[: books.shape[0], : books.shape[1]] = books
    return full


def save_model(
    model: LLM4Rec,
    vocab: IdVocabulary,
    cfg: Config,
    run: RunFolder,
    item_key: str,
    best_epoch: int,
    levels: int,
    size: int,
) -> None:
    """Write ``run``'s backbone folder, projection and ``llm.json`` (written last: marks a complete output)."""
    model.backbone.save(run.backbone)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in model.projection.state_dict().items()}
    atomic_write_bytes(run.projection, save(weights))
    manifest = {
        "base_backbone": cfg.llm.backbone,
        "backbone": run.backbone.name,
        "architecture": model.backbone.architecture,
        "pooling": model.backbone.pooling,
        "hidden_size": model.backbone.hidden_size,
        "out_dim": model.out_dim,
        "proj_hidden": cfg.llm.proj_hidden,
        "levels": levels,
        "codebook_size": size,
        "user_token_range": [int(vocab.user_token_ids.min()), int(vocab.user_token_ids.max())],
        "item_token_range": [int(vocab.item_token_ids.min()), int(vocab.item_token_ids.max())],
        "history_len": cfg.llm.history_len,
        "history_style": cfg.llm.history_style,
        "prompt_layout": layout_for(cfg.llm.training),
        "item_vectors": item_key,
        "best_epoch": best_epoch,
        "config_hash": cfg.hash(),
    }
    atomic_write_json(run.llm_manifest, manifest)


def training_curve_png(history: list[dict[str, Any]]) -> bytes:
    """PNG: training loss per epoch and validation NDCG@20 where it was measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    loss_ax, valid_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["loss"] for h in history], marker="o")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    validated = [h for h in history if "valid" in h]
    valid_ax.plot([h["epoch"] for h in validated], [h["valid"]["NDCG@20"] for h in validated], marker="o")
    valid_ax.set_xlabel("epoch")
    valid_ax.set_ylabel("validation NDCG@20")
    fig.suptitle("LLM4Rec fine-tuning")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()

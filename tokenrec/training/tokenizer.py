"""Training loop of the ID tokenizers (MQ-Tokenizer and ablations), with checkpoint/resume.

One call fits one tokenizer (users or items) on a matrix of embeddings: seed, build the module chosen by
``cfg.kind``, k-means-initialise its codebooks on the encoder outputs, then train with Adam over shuffled
mini-batches for ``cfg.epochs`` passes or, by default, as many passes as a budget of ``cfg.steps`` gradient
steps takes (1,000 users then get as much training as 20,000). Dead codes are re-seeded after each epoch
during the first ``reseed_until`` of the epochs. Each epoch's mean losses, codebook usage and perplexity go
into the history. A checkpoint (weights, optimiser, RNG states, history) is written atomically every
``train.checkpoint_every`` epochs (at most ~20 per run); a restarted run resumes from the last complete one
and ends where an uninterrupted run ends (bit for bit on the CPU with a fixed seed). Checkpoints are kept per
fingerprint of (embeddings, tokenizer config, seed), so a rerun after the GNN or the config changed starts
afresh instead of resuming a different run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tokenrec.config import TokenizerConfig, TrainConfig
from tokenrec.models.quantizer import Tokenizer, code_stats, perplexity
from tokenrec.models.tokenizers import build_tokenizer
from tokenrec.training.checkpoint import (
    CheckpointManager,
    fingerprint,
    fingerprint_folder,
    rng_state,
    set_rng_state,
)
from tokenrec.training.device import pick_device, seed_everything, torch_threads

log = logging.getLogger(__name__)

_RESEED_SAMPLE = 16384  # entities whose latents the dead codes are re-seeded from
_MAX_CHECKPOINTS = 20  # per run: a small catalog runs hundreds of short epochs, not worth a file each


@dataclass
class TrainedTokenizer:
    """The result of :func:`fit_tokenizer`."""

    model: Tokenizer  # on the CPU, in eval mode
    codes: Tensor  # (N, K) int64 token table, row i = entity i
    stats: dict[str, Any]  # code_stats + reconstruction error + timing
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch


def fit_tokenizer(
    embeddings: Tensor,
    cfg: TokenizerConfig,
    train: TrainConfig,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    name: str = "tokenizer",
) -> TrainedTokenizer:
    """Build and train the tokenizer ``cfg.kind`` on ``embeddings`` (N, D); tokenize every row.

    Args:
        embeddings: one row per entity (user or item index), float.
        cfg: tokenizer hyperparameters.
        train: device, seed, checkpoint interval and progress-bar switch.
        checkpoint_dir: where to keep checkpoints and resume from; None trains without checkpoints.
        name: label for the progress bar and logs (``user``, ``item``).

    Returns:
        The trained module (CPU, eval mode), the token table, statistics and the per-epoch history.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"{name} embeddings must be a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}"
        )
    device = pick_device(train.device)
    with torch_threads(cfg.cpu_threads, device):
        return _fit(embeddings, cfg, train, device, checkpoint_dir, name)


def _fit(
    embeddings: Tensor,
    cfg: TokenizerConfig,
    train: TrainConfig,
    device: torch.device,
    checkpoint_dir: str | os.PathLike[str] | None,
    name: str,
) -> TrainedTokenizer:
    started = time.perf_counter()
    seed_everything(train.seed)
    generator = torch.Generator().manual_seed(train.seed)  # shuffling, k-means, re-seeding; checkpointed
    x = embeddings.detach().float().to(device)  # (N, D)
    model = build_tokenizer(cfg, x.shape[1]).to(device)
    epochs = planned_epochs(cfg, x.shape[0]) if model.trainable else 0
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr) if model.trainable else None
    manager = None
    if checkpoint_dir is not None and epochs > 0:
        manager = CheckpointManager(_checkpoint_folder(Path(checkpoint_dir), embeddings, cfg, train.seed))

    history: list[dict[str, Any]] = []
    resumed = manager.load_latest(map_location="cpu") if manager else None  # RNG states must stay on the CPU
    if resumed is not None:
        start_epoch, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        log.info("%s tokenizer: resumed after epoch %d of %d", name, start_epoch, epochs)
    else:
        start_epoch = 0
        if cfg.kmeans_init or not model.trainable:
            model.init_codebooks(x, generator, iters=cfg.kmeans_iters)

    reseed_epochs = int(cfg.reseed_until * epochs) if cfg.reseed_dead else 0
    save_every = max(train.checkpoint_every, math.ceil(epochs / _MAX_CHECKPOINTS))
    bar = tqdm(range(start_epoch, epochs), desc=f"{name} tokenizer", unit="epoch", disable=not train.progress)
    for epoch in bar:
        record = _train_epoch(model, optimizer, x, cfg.batch_size, generator)
        counts = record.pop("counts")  # (K, L) codes chosen during this epoch
        record["reseeded"] = 0
        if epoch < reseed_epochs:
            sample = x[torch.randperm(x.shape[0], generator=generator)[:_RESEED_SAMPLE].to(device)]
            record["reseeded"] = model.reseed_dead_codes(sample, counts, generator)
        record["epoch"] = epoch + 1
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", ppl=f"{min(record['perplexity']):.0f}")
        if manager and ((epoch + 1) % save_every == 0 or epoch + 1 == epochs):
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "rng": rng_state(),
                "history": history,
            }
            manager.save(epoch + 1, state)

    codes = model.encode(x).cpu()  # (N, K)
    stats = code_stats(codes, model.codebook_size)
    stats.update(reconstruction_errors(model, x))
    stats.update(
        kind=model.kind,
        epochs=epochs,
        device=str(device),
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info(
        "%s tokenizer (%s): %d entities, usage %s, perplexity %s, %d colliding, recon MSE %.5f, %.1f s",
        name,
        model.kind,
        stats["entities"],
        [round(u, 3) for u in stats["usage"]],
        [round(p, 1) for p in stats["perplexity"]],
        stats["colliding_entities"],
        stats["recon_mse"],
        stats["seconds"],
    )
    return TrainedTokenizer(model=model.cpu().eval(), codes=codes, stats=stats, history=history)


def planned_epochs(cfg: TokenizerConfig, n_entities: int) -> int:
    """``cfg.epochs`` when set, else enough passes over ``n_entities`` for ``cfg.steps`` gradient steps."""
    if cfg.epochs:
        return cfg.epochs
    return math.ceil(cfg.steps / math.ceil(n_entities / cfg.batch_size))


def _train_epoch(
    model: Tokenizer,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """One pass over shuffled mini-batches; mean losses, per-level usage/perplexity and code counts (K, L)."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    totals = torch.zeros(4, device=x.device)  # loss, recon, codebook, commit (sums over entities)
    counts = torch.zeros(model.num_levels, model.codebook_size, dtype=torch.long, device=x.device)  # (K, L)
    for idx in order.split(batch_size):
        out = model(x[idx])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        parts = torch.stack([out.loss, out.recon_loss, out.codebook_loss, out.commit_loss]).detach()
        totals += parts * idx.numel()
        counts += model.code_counts(out.codes)
    loss, recon, codebook, commit = (totals / n).tolist()
    counts_cpu = counts.cpu()
    return {
        "loss": loss,
        "recon": recon,
        "codebook": codebook,
        "commit": commit,
        "usage": [float((c > 0).sum()) / model.codebook_size for c in counts_cpu],
        "perplexity": [perplexity(c) for c in counts_cpu],
        "counts": counts,
    }


@torch.no_grad()
def reconstruction_errors(model: Tokenizer, x: Tensor) -> dict[str, float]:
    """Reconstruction through the tokens, without masking.

    Returns:
        ``recon_mse``: mean squared error per element; ``unexplained_variance``: ||x - r||^2 / ||x - mean(x)||^2
        (0 is perfect, 1 is no better than predicting the mean embedding).
    """
    recon = model.reconstruct(x)  # (N, D)
    err = float(((x - recon) ** 2).sum())
    spread = float(((x - x.mean(0)) ** 2).sum())
    return {
        "recon_mse": err / x.numel(),
        "unexplained_variance": err / spread if spread > 0 else 0.0,
    }


def _checkpoint_folder(root: Path, embeddings: Tensor, cfg: TokenizerConfig, seed: int) -> Path:
    """``root/<fingerprint>``: checkpoints are resumed only by a run with the same data, config and seed.

    Folders of other fingerprints under ``root`` are stale (the GNN or the config changed) and are removed.
    """
    return fingerprint_folder(
        root, fingerprint(cfg, seed, [embeddings.detach().float().cpu().numpy()], "tokenizer")
    )

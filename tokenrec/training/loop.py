"""The epoch loop every recommender trainer shares: validation, early stopping, history, checkpoint, resume.

A trainer supplies ``run_epoch(epoch) -> losses`` and ``validate() -> metrics``; :func:`fit` calls them, keeps
the weights with the best validation NDCG@20 (models are selected on validation only, PAPER.md section 5),
stops after ``patience`` epochs without improvement, appends one entry per epoch to ``history.json`` and writes
an atomic checkpoint (model, optimizer, epoch, best metric and weights, history, RNG state) every
``checkpoint_every`` epochs and at the end. Started again with the same ``out_dir`` it resumes from the last
complete checkpoint; trainers whose epoch ``e`` draws its randomness from a generator seeded by
``(seed, e)`` then end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from tokenrec.config import TrainConfig
from tokenrec.run_folder import CHECKPOINTS_DIR, HISTORY_FILE
from tokenrec.storage import atomic_write_json
from tokenrec.training.checkpoint import CheckpointManager, fingerprint_folder, rng_state, set_rng_state

log = logging.getLogger(__name__)

SELECT_METRIC = "NDCG@20"  # model selection on validation (PAPER.md section 5)


class StopSettings(Protocol):
    """The fields of a model's config section that the loop reads."""

    max_epochs: int
    patience: int  # epochs without a better validation metric before stopping
    eval_every: int


@dataclass
class TrainResult:
    """What a training run ended with."""

    best_epoch: int  # epoch whose weights the model now holds (0: never evaluated)
    best_valid: dict[str, float]  # validation metrics of those weights
    epochs: int  # epochs trained in total, over all restarts
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    run_epoch: Callable[[int], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    settings: StopSettings,
    train: TrainConfig,
    out_dir: Path | None = None,
    name: str = "model",
    run_key: str = "",
) -> TrainResult:
    """Train until ``max_epochs`` or early stop; leave the best validation weights in ``model``.

    Args:
        model: the module whose ``state_dict`` is checkpointed and selected.
        optimizer: its optimizer (checkpointed too).
        run_epoch: trains one epoch (1-based number given) and returns mean losses, e.g. ``{"loss": 0.3}``.
        validate: validation metrics of the current weights; must contain :data:`SELECT_METRIC`.
        settings: ``max_epochs``, ``patience`` and ``eval_every``.
        train: checkpoint interval and progress bar switch.
        out_dir: folder for ``history.json`` and ``checkpoints/``; None keeps everything in memory.
        name: label for logs and the progress bar.
        run_key: the run's :func:`tokenrec.training.checkpoint.fingerprint`: only checkpoints written under
            the same key are resumed (``out_dir/checkpoints/<run_key>``); others are removed.
    """
    state: dict[str, Any] = {
        "epoch": 0,
        "best_metric": -1.0,
        "best_epoch": 0,
        "best_valid": {},
        "history": [],
    }
    best_weights: dict[str, torch.Tensor] = {}
    manager = (
        CheckpointManager(fingerprint_folder(out_dir / CHECKPOINTS_DIR, run_key))
        if out_dir is not None
        else None
    )
    device = next(model.parameters()).device
    if manager is not None and (found := manager.load_latest(map_location=device)) is not None:
        _, saved = found
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        best_weights = saved["best_weights"]
        set_rng_state(saved["rng"])
        state = {key: saved[key] for key in state}
        log.info(
            "%s: resumed after epoch %d (best %s %.4f)",
            name,
            state["epoch"],
            SELECT_METRIC,
            state["best_metric"],
        )

    def finished() -> bool:
        since_best = state["epoch"] - state["best_epoch"]
        return state["epoch"] >= settings.max_epochs or (
            state["best_epoch"] > 0 and since_best >= settings.patience
        )

    bar = tqdm(
        total=settings.max_epochs, initial=state["epoch"], desc=f"{name} epochs", disable=not train.progress
    )
    while not finished():
        epoch = state["epoch"] + 1
        model.train()
        wall, cpu = time.perf_counter(), time.process_time()
        entry: dict[str, Any] = {"epoch": epoch, **run_epoch(epoch)}
        entry.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)
        if epoch % settings.eval_every == 0 or epoch == settings.max_epochs:
            model.eval()
            with torch.no_grad():
                valid = validate()
            entry["valid"] = valid
            if valid[SELECT_METRIC] > state["best_metric"]:
                state.update(best_metric=valid[SELECT_METRIC], best_epoch=epoch, best_valid=valid)
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            log.info(
                "%s epoch %d: %s; valid %s %.4f",
                name,
                epoch,
                _losses(entry),
                SELECT_METRIC,
                valid[SELECT_METRIC],
            )
        state["epoch"] = epoch
        state["history"].append(entry)
        bar.update(1)
        bar.set_postfix_str(f"{_losses(entry)} best {SELECT_METRIC} {max(state['best_metric'], 0.0):.4f}")
        if out_dir is not None:
            atomic_write_json(out_dir / HISTORY_FILE, state["history"])
        if manager is not None and (epoch % train.checkpoint_every == 0 or finished()):
            extra = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()}
            manager.save(epoch, {**state, **extra, "best_weights": best_weights})
    bar.close()
    if best_weights:
        model.load_state_dict(best_weights)
    model.eval()
    return TrainResult(state["best_epoch"], state["best_valid"], state["epoch"], state["history"])


def _losses(entry: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4f}" for k, v in entry.items() if k not in ("epoch", "valid") and "seconds" not in k
    )

"""Stage ``train-gnn``: interactions snapshot -> LightGCN user and item embeddings (PAPER.md section 2, step 0).

Trains LightGCN on the snapshot's training edges (``cfg.gnn``), selects the epoch with the best validation
NDCG@20 (with ``gnn.seeds`` > 1, it trains that many seeds and keeps the one best on validation NDCG@20),
and writes into ``run_dir/gnn/``:

- ``embeddings.safetensors``: float32 ``user_ego`` (n_users, d), ``item_ego`` (n_items, d) and the propagated
  ``user`` (n_users, d), ``item`` (n_items, d) (mean of the layer outputs), of the selected weights;
- ``metrics.json``: validation and test HR/NDCG@K of the propagated embeddings (the LightGCN model) and,
  under ``ego``, of the layer-0 tables, plus the selected epoch and timings;
- ``history.json``: one record per epoch (loss, L2 term, seconds, validation metrics when evaluated);
- ``checkpoints/``: a rerun after a kill resumes from the last complete one;
- ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from tokenrec.config import Config, GnnConfig, save_config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import InputError
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_valid_test
from tokenrec.models.lightgcn import LightGCN, normalized_adjacency
from tokenrec.storage import atomic_write_bytes, atomic_write_json
from tokenrec.training.device import cpu_threads, seed_everything
from tokenrec.training.gnn import SELECT_METRIC, TrainResult, train_bpr

log = logging.getLogger(__name__)

GNN_DIR = "gnn"
EMBEDDINGS_FILE = "embeddings.safetensors"
TENSORS = ("user_ego", "item_ego", "user", "item")


def build_lightgcn(data: InteractionData, cfg: GnnConfig) -> LightGCN:
    """A fresh LightGCN over ``data``'s training graph."""
    users, items = data.train_pairs
    graph = normalized_adjacency(users, items, data.n_users, data.n_items)
    threads = cfg.threads or cpu_threads()
    return LightGCN(
        data.n_users, data.n_items, cfg.dim, cfg.layers, graph, cfg.init_std, threads, cfg.refresh_every
    )


def run(cfg: Config, snapshot: Path, run_dir: Path) -> dict[str, Any]:
    """Train LightGCN on ``snapshot`` and write its artifacts under ``run_dir/gnn``.

    Args:
        cfg: the resolved configuration (``gnn``, ``train`` and ``eval`` are used).
        snapshot: the interactions snapshot folder (``.../interactions/snapshot_date=D``).
        run_dir: the run folder.

    Returns:
        A summary: output folder, selected epoch, epochs trained, and the test metrics.
    """
    out = Path(run_dir) / GNN_DIR
    save_config(cfg, out)
    data = InteractionData.load(snapshot)
    log.info("train-gnn on %s: %s", snapshot, data.summary())
    model, result, seeds = train_seeds(data, cfg, out)

    user_ego, item_ego = model.ego_tables()
    user, item = model.propagate()
    tensors = {"user_ego": user_ego, "item_ego": item_ego, "user": user, "item": item}
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(out / EMBEDDINGS_FILE, save(tensors))

    ks, batch, progress = cfg.eval.ks, cfg.eval.batch_size, cfg.train.progress
    scores = evaluate_valid_test(data, EmbeddingRanker(tensors["user"], tensors["item"]), ks, batch, progress)
    ego = evaluate_valid_test(
        data, EmbeddingRanker(tensors["user_ego"], tensors["item_ego"]), ks, batch, progress
    )
    trained = [h for h in result.history if "seconds" in h]
    metrics = {
        **scores,
        "ego": ego,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "seconds_per_epoch": sum(h["seconds"] for h in trained) / max(1, len(trained)),
        "seeds": seeds,
        "dataset": data.name,
        "summary": data.summary(),
    }
    atomic_write_json(out / "metrics.json", metrics)
    log.info("train-gnn: best epoch %d of %d, test %s", result.best_epoch, result.epochs, scores["test"])
    return {"out": str(out), "best_epoch": result.best_epoch, "epochs": result.epochs, "test": scores["test"]}


def train_seeds(data: InteractionData, cfg: Config, out: Path) -> tuple[LightGCN, TrainResult, list[dict]]:
    """Train ``cfg.gnn.seeds`` LightGCNs (seeds ``train.seed + r``) and keep the best on validation NDCG@20.

    With one seed (the default) the run's files sit directly in ``out``; with several, each seed trains in
    ``out/seed-<s>/`` (its own history and checkpoints, so a killed run resumes seed by seed).

    Returns:
        The selected model (holding its best weights), its training result, and one record per seed
        (seed, best epoch, epochs, validation metrics) for the metrics file.
    """
    best: tuple[LightGCN, TrainResult] | None = None
    records = []
    for r in range(cfg.gnn.seeds):
        seed = cfg.train.seed + r
        train = dataclasses.replace(cfg.train, seed=seed)
        folder = out if cfg.gnn.seeds == 1 else out / f"seed-{seed}"
        seed_everything(seed)  # the initial weights are part of the run's reproducibility
        model = build_lightgcn(data, cfg.gnn)
        result = train_bpr(model, data, cfg.gnn, train, cfg.eval.ks, folder, name=f"lightgcn seed {seed}")
        score = result.best_valid.get(SELECT_METRIC, float("-inf"))
        records.append({"seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
                        "valid": result.best_valid})
        if best is None or score > best[1].best_valid.get(SELECT_METRIC, float("-inf")):
            best = (model, result)
        log.info("train-gnn: seed %d valid %s %.4f", seed, SELECT_METRIC, score)
    assert best is not None  # gnn.seeds >= 1 (checked by the config)
    if cfg.gnn.seeds > 1:
        atomic_write_json(out / "history.json", best[1].history)
    return best[0], best[1], records


def load_embeddings(run_dir: Path) -> dict[str, torch.Tensor]:
    """The four tensors of ``run_dir/gnn/embeddings.safetensors``.

    Raises:
        InputError: the file is missing, unreadable or lacks a tensor.
    """
    path = Path(run_dir) / GNN_DIR / EMBEDDINGS_FILE
    if not path.is_file():
        raise InputError(path, "GNN embeddings not found", "Run `tokenrec train-gnn` for this run first.")
    try:
        tensors = load(path.read_bytes())
    except SafetensorError as exc:
        raise InputError(
            path, f"cannot read the GNN embeddings ({exc})", "Rerun `tokenrec train-gnn`."
        ) from exc
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise InputError(path, f"tensors {missing} are missing", "Rerun `tokenrec train-gnn`.")
    return tensors

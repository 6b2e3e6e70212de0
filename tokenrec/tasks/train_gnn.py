"""Stage ``train-gnn``: interactions snapshot -> LightGCN user and item embeddings (PAPER.md section 2, step 0).

Trains LightGCN on the snapshot's training edges (``cfg.gnn``), selects the epoch with the best validation
NDCG@20 (with ``gnn.seeds`` > 1, it trains that many seeds and keeps the one best on validation NDCG@20),
and writes into ``run_dir/gnn/`` (:class:`tokenrec.run_folder.RunFolder`):

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

from safetensors.torch import save

from tokenrec.config import Config, save_config
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_valid_test
from tokenrec.models.lightgcn import LightGCN
from tokenrec.run_folder import GNN, RunFolder
from tokenrec.storage import atomic_write_bytes, atomic_write_json
from tokenrec.training.device import seed_everything
from tokenrec.training.gnn import SELECT_METRIC, TrainResult, build_lightgcn, train_bpr

log = logging.getLogger(__name__)


def run(cfg: Config, snapshot: Path, run_dir: Path) -> dict[str, Any]:
    """Train LightGCN on ``snapshot`` and write its artifacts under ``run_dir/gnn``.

    Args:
        cfg: the resolved configuration (``gnn``, ``train`` and ``eval`` are used).
        snapshot: the interactions snapshot folder (``.../interactions/snapshot_date=D``).
        run_dir: the run folder.

    Returns:
        A summary: output folder, selected epoch, epochs trained, and the test metrics.
    """
    run = RunFolder(run_dir)
    out = run.gnn
    save_config(cfg, out)
    data = InteractionData.load(snapshot)
    log.info("train-gnn on %s: %s", snapshot, data.summary())
    model, result, seeds = train_seeds(data, cfg, run)

    user_ego, item_ego = model.ego_tables()
    user, item = model.propagate()
    tensors = {"user_ego": user_ego, "item_ego": item_ego, "user": user, "item": item}
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(run.embeddings, save(tensors))

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
    atomic_write_json(run.metrics(GNN), metrics)
    log.info("train-gnn: best epoch %d of %d, test %s", result.best_epoch, result.epochs, scores["test"])
    return {"out": str(out), "best_epoch": result.best_epoch, "epochs": result.epochs, "test": scores["test"]}


def train_seeds(data: InteractionData, cfg: Config, run: RunFolder) -> tuple[LightGCN, TrainResult, list[dict]]:
    """Train ``cfg.gnn.seeds`` LightGCNs (seeds ``train.seed + r``) and keep the best on validation NDCG@20.

    With one seed (the default) the run's files sit directly in ``gnn/``; with several, each seed trains in
    ``gnn/seed-<s>/`` (its own history and checkpoints, so a killed run resumes seed by seed).

    Returns:
        The selected model (holding its best weights), its training result, and one record per seed
        (seed, best epoch, epochs, validation metrics) for the metrics file.
    """
    best: tuple[LightGCN, TrainResult] | None = None
    records = []
    for r in range(cfg.gnn.seeds):
        seed = cfg.train.seed + r
        train = dataclasses.replace(cfg.train, seed=seed)
        folder = run.gnn if cfg.gnn.seeds == 1 else run.gnn_seed(seed)
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
        atomic_write_json(run.history(GNN), best[1].history)
    return best[0], best[1], records


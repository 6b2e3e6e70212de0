"""Seen vs unseen users (the paper's Table IV): hold 10% of users out of all training, then score them.

    python -m tokenrec.bench.unseen_users --dataset lastfm --profile bench-cpu \\
        --snapshot var/bench/lastfm/lake/interactions/snapshot_date=2026-11-27 --run-dir var/bench/lastfm/runs/unseen

A random ``--share`` of the users (seeded) is removed from a copy of the snapshot; LightGCN, the MQ-Tokenizers
and LLM4Rec are trained on the rest with the pipeline's own stages. The held-out users are then served exactly
as batch inference serves a user who is new since the last retrain (:mod:`tokenrec.serving.foldin`): one LightGCN
propagation step from their training interactions into the frozen item table gives their embedding, the frozen
user tokenizer gives their tokens, and nothing is retrained. Both groups are scored on the same validation and
test targets with the usual protocol (full ranking, seen items excluded): LightGCN with the folded-in user
embedding, and the TokenRec variants. Users are re-indexed so that the trained ones come first (fold-in serves
indices beyond the trained tables); items keep their indices. Fold-in reads training interactions only, so no
validation or test target leaks into a held-out user's embedding.
``--folds k`` (k > 1) cuts the users into k disjoint folds and trains k times, each time holding one fold out,
so that every user is scored unseen once: on a small data set (LastFM's 1,090 users) one 10% share is too few
users for a tight hit rate. The file then holds the metrics pooled over the folds (weighted by targets), each
fold's own, and the binomial standard error of every pooled HR@20.
Writes ``docs/benchmarks/unseen-users-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tokenrec import schema
from tokenrec.artifacts import load_embeddings, load_tokenizer
from tokenrec.bench.machine import add_run_arguments, write_result
from tokenrec.cli import build_config
from tokenrec.config import Config
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_valid_test
from tokenrec.llm.scorer import EVAL_MODELS, TokenRecRanker, TokenRecScorer
from tokenrec.run_folder import RunFolder, gnn_table
from tokenrec.serving.foldin import extend_codes, fold_in
from tokenrec.storage import atomic_write_json, read_json, read_manifest
from tokenrec.tasks import train_gnn, train_llm, train_tokenizer

log = logging.getLogger(__name__)
SPLITS = {InteractionData.VALID: "valid", InteractionData.TEST: "test"}
SPLIT_STRINGS = {InteractionData.TRAIN: schema.SPLIT_TRAIN, InteractionData.VALID: schema.SPLIT_VALID,
                 InteractionData.TEST: schema.SPLIT_TEST}  # fmt: skip


def hold_out(data: InteractionData, share: float, seed: int) -> tuple[InteractionData, int]:
    """``data`` with users re-indexed so that a random ``share`` of them come last, and the count of the rest."""
    rng = np.random.default_rng(seed)
    held = rng.choice(data.n_users, size=max(1, round(share * data.n_users)), replace=False)
    return hold_out_users(data, held)


def folds(n_users: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint sets of users covering all ``n_users`` (a seeded permutation cut into near-equal parts)."""
    return np.array_split(np.random.default_rng(seed).permutation(n_users), k)


def hold_out_users(data: InteractionData, held: np.ndarray) -> tuple[InteractionData, int]:
    """``data`` with users re-indexed so that the ``held`` users come last, and the count of the rest."""
    is_held = np.zeros(data.n_users, dtype=bool)
    is_held[held] = True
    order = np.concatenate([np.flatnonzero(~is_held), np.flatnonzero(is_held)])  # new index -> old index
    new_index = np.empty(data.n_users, dtype=np.int64)
    new_index[order] = np.arange(data.n_users)
    remapped = InteractionData.from_arrays(
        new_index[data.users], data.items, data.timestamps, data.splits, data.n_users, data.n_items, data.name
    )
    return remapped, int((~is_held).sum())


def subset(data: InteractionData, keep: np.ndarray, n_users: int | None = None) -> InteractionData:
    """The rows of users with ``keep[user]`` True (user indices unchanged; ``n_users`` default unchanged)."""
    rows = keep[data.users]
    return InteractionData.from_arrays(
        data.users[rows], data.items[rows], data.timestamps[rows], data.splits[rows],
        n_users if n_users is not None else data.n_users, data.n_items, data.name,
    )  # fmt: skip


def write_snapshot(data: InteractionData, folder: Path, manifest: dict[str, Any]) -> Path:
    """``data`` as an interactions snapshot folder the stages read (Parquet + manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            schema.USER_IDX: pa.array(data.users, pa.int32()),
            schema.ITEM_IDX: pa.array(data.items, pa.int32()),
            schema.EVENT_TS: pa.array(data.timestamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            schema.SPLIT: pa.array([SPLIT_STRINGS[int(s)] for s in data.splits], pa.string()),
        },
        schema=schema.INTERACTIONS,
    )
    pq.write_table(table, folder / "part-00000.parquet")
    atomic_write_json(
        folder / schema.MANIFEST_FILE, {**manifest, "n_users": data.n_users, "rows": len(data.users)}
    )
    return folder


def score_held_out(
    cfg: Config, full: InteractionData, n_seen: int, run_dir: Path, manifest: dict[str, Any], train: bool
) -> dict[str, Any]:
    """Train on the first ``n_seen`` users of ``full`` (unless ``train`` is false), fold the rest in, score both."""
    is_seen = np.arange(full.n_users) < n_seen
    snapshot = run_dir / "train_snapshot"
    if train:
        write_snapshot(subset(full, is_seen, n_seen), snapshot, manifest)
        for stage in (train_gnn, train_tokenizer, train_llm):
            stage.run(cfg, snapshot, run_dir)

    # Fold the held-out users in from their training interactions, as batch inference does.
    run = RunFolder(run_dir)
    user_key, item_key = gnn_table("user", cfg.gnn.output), gnn_table("item", cfg.gnn.output)
    emb = {k: v.numpy() for k, v in load_embeddings(run, [user_key, item_key]).items()}
    train_users, train_items = full.train_pairs
    folded = fold_in(emb[user_key], emb[item_key], train_users, train_items, full.n_users, full.n_items)
    scorer = TokenRecScorer.from_run(run.root, cfg)
    tokenizer = load_tokenizer(run, "user")
    vocab = int(read_json(run.llm_manifest)["codebook_size"])
    scorer.user_codes = extend_codes(scorer.user_codes, tokenizer, folded.user, folded.new_users, vocab)

    groups = {"seen": subset(full, is_seen), "unseen": subset(full, ~is_seen)}
    ks, batch = cfg.eval.ks, cfg.eval.batch_size
    results: dict[str, Any] = {
        "dataset": full.name,
        "users": {"seen": n_seen, "unseen": full.n_users - n_seen},
        "targets": {group: {name: len(data.targets(split)[0]) for split, name in SPLITS.items()}
                    for group, data in groups.items()},
    }  # fmt: skip
    for group, data in groups.items():
        gnn = EmbeddingRanker(torch.from_numpy(folded.user), torch.from_numpy(emb[item_key]))
        results.setdefault("lightgcn", {})[group] = evaluate_valid_test(data, gnn, ks, batch)
        for name, variant in EVAL_MODELS.items():
            ranker = TokenRecRanker(scorer, data, variant)
            results.setdefault(name, {})[group] = evaluate_valid_test(data, ranker, ks, batch)
        log.info(
            "%s users: %s", group, {m: results[m][group]["test"]["HR@20"] for m in ("lightgcn", "tokenrec")}
        )
    results["fold_in"] = folded.stats
    return results


def pool(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, group and split, the metrics of all folds averaged over their targets, as one held-out set.

    Also the users and targets summed over the folds, and the binomial standard error of each pooled HR@20
    (``sqrt(p (1 - p) / targets)``, one target per user and split). Each user is unseen in exactly one fold, so
    the unseen error is that of independent users; a user is seen in k - 1 folds, so the seen error treats
    k - 1 correlated scorings as independent and is too small by up to ``sqrt(k - 1)``.
    """
    first = per_fold[0]
    targets = {
        g: {s: sum(f["targets"][g][s] for f in per_fold) for s in SPLITS.values()} for g in first["targets"]
    }
    pooled: dict[str, Any] = {
        "dataset": first["dataset"],
        "users": {g: sum(f["users"][g] for f in per_fold) for g in first["users"]},
        "targets": targets,
    }
    for model, groups in first.items():
        if not is_model_row(groups):
            continue
        pooled[model] = {
            group: {
                split: {
                    metric: sum(f[model][group][split][metric] * f["targets"][group][split] for f in per_fold)
                    / max(1, targets[group][split])
                    for metric in first[model][group][split]
                }
                for split in SPLITS.values()
            }
            for group in groups
        }
    pooled["standard_error_hr20"] = {
        model: {
            group: {split: binomial_se(m[split]["HR@20"], targets[group][split]) for split in SPLITS.values()}
            for group, m in pooled[model].items()
        }
        for model in pooled
        if is_model_row(pooled[model])
    }
    return pooled


def is_model_row(value: Any) -> bool:
    """A model's metrics per group (``{"seen": {"valid": {...}, "test": {...}}, ...}``), not counts."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("seen"), dict)
        and isinstance(value["seen"].get("valid"), dict)
    )


def binomial_se(rate: float, n: int) -> float:
    """Standard error of a hit rate measured on ``n`` independent targets."""
    return math.sqrt(rate * (1.0 - rate) / max(1, n))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser)
    parser.add_argument("--share", type=float, default=0.1, help="share of users held out (one fold)")
    parser.add_argument(
        "--folds",
        type=int,
        default=1,
        help="k > 1: every user held out once, by k trainings on disjoint folds (--share unused)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-training", action="store_true", help="reuse the stages' outputs in --run-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.folds < 1:
        raise SystemExit(f"--folds must be >= 1, got {args.folds}")

    cfg = build_config(args)
    data = InteractionData.load(args.snapshot)
    if args.folds > data.n_users:
        raise SystemExit(
            f"--folds {args.folds} exceeds the {data.n_users} users of {args.snapshot}; use at most that"
        )
    manifest = read_manifest(args.snapshot)
    if args.folds == 1:
        full, n_seen = hold_out(data, args.share, args.seed)
        per_fold = [score_held_out(cfg, full, n_seen, args.run_dir, manifest, not args.skip_training)]
        held_out = (
            f"{args.share:.0%} of users (seed {args.seed}) removed from GNN, tokenizer and LLM training"
        )
    else:
        per_fold = []
        for index, held in enumerate(folds(data.n_users, args.folds, args.seed)):
            full, n_seen = hold_out_users(data, held)
            fold_dir = args.run_dir / f"fold-{index}"
            per_fold.append(score_held_out(cfg, full, n_seen, fold_dir, manifest, not args.skip_training))
        held_out = (f"{args.folds} disjoint folds of the users (seed {args.seed}); each fold removed from GNN, "
                    "tokenizer and LLM training in its own run and scored against it; every user held out once")  # fmt: skip
    results = pool(per_fold)
    if args.folds > 1:
        results["folds"] = per_fold
    else:
        results["fold_in"] = per_fold[0]["fold_in"]
    results["protocol"] = {
        "held_out": held_out,
        "fold_in": "one LightGCN propagation step from the user's training interactions; frozen tokenizer",
        "exclusion": "training items (valid); training and validation items (test); full ranking",
    }
    command = " ".join(
        ["python -m tokenrec.bench.unseen_users", *(argv if argv is not None else sys.argv[1:])]
    )
    write_result(f"unseen-users-{data.name}", {**results, "profile": args.profile,
                                               "overrides": args.overrides}, command=command)  # fmt: skip
    print(json.dumps({k: v for k, v in results.items() if k != "folds"}, indent=1)[:3000])


if __name__ == "__main__":
    main()

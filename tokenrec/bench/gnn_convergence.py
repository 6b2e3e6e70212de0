"""LightGCN convergence at scale: wall and CPU time until validation NDCG@20 stops improving, ~1M interactions.

    python -m tokenrec.bench.gnn_convergence --users 60000 --items 25000 --edges 1000000 \\
        --set gnn.refresh_every=16 --name speed-lightgcn-convergence-1m

No public data set of that size ships with the project, so the graph is synthetic but has structure to learn:
users and items belong to one of ``--clusters`` taste groups, user activity is log-normal, item popularity is
Zipf-like (rank^-0.8), and each interaction picks an item of the user's own group with probability 0.8 (by
popularity within the group), otherwise any item by global popularity. Each user's items come in a random time
order; leave-one-out gives validation and test (users with at least 3 items), as the ETL does.

Training is the pipeline's own loop (:func:`tokenrec.training.gnn.train_bpr`: BPR, one uniform negative, batch
``gnn.batch_size``, early stopping on validation NDCG@20 with ``gnn.patience``). The result records every
validation (epoch, training wall and CPU seconds so far, NDCG@20), the epoch and time at which validation NDCG@20
first reached 95% and 99% of its best, and the test metrics of the selected epoch, so "converged in N minutes"
can be read off, and the machine's load average (wall times under load are upper bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from tokenrec.bench.machine import machine, write_result
from tokenrec.config import load_config
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_split
from tokenrec.training.device import seed_everything
from tokenrec.training.gnn import build_lightgcn, train_bpr


def clustered_graph(n_users: int, n_items: int, edges: int, clusters: int, seed: int = 0) -> InteractionData:
    """A synthetic snapshot with taste groups (see the module docstring), split leave-one-out."""
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, clusters, n_users)
    item_group = rng.integers(0, clusters, n_items)
    popularity = rng.permutation((np.arange(n_items) + 1.0) ** -0.8)
    activity = rng.lognormal(0.0, 1.0, n_users)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < edges:  # repeated pairs are dropped: draw until enough distinct ones
        draw = int(1.3 * (edges - len(keys))) + 1000
        users = rng.choice(n_users, draw, p=activity / activity.sum())
        items = rng.choice(n_items, draw, p=popularity / popularity.sum())  # global by default
        own = rng.random(draw) < 0.8
        for group in range(clusters):
            rows = np.flatnonzero(own & (user_group[users] == group))
            members = np.flatnonzero(item_group == group)
            weights = popularity[members] / popularity[members].sum()
            items[rows] = rng.choice(members, len(rows), p=weights)
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_items + items]))
    keys = rng.permutation(keys)[:edges]
    users, items = keys // n_items, keys % n_items
    timestamps = rng.permutation(len(users)).astype(np.int64)  # a random order within each user
    order = np.lexsort((timestamps, users))
    users, items, timestamps = users[order], items[order], timestamps[order]
    counts = np.bincount(users, minlength=n_users)
    position_from_end = np.concatenate([np.arange(c)[::-1] for c in counts])  # 0 = the user's last item
    eligible = counts[users] >= 3
    splits = np.where(eligible & (position_from_end == 0), InteractionData.TEST,
                      np.where(eligible & (position_from_end == 1), InteractionData.VALID, InteractionData.TRAIN))
    return InteractionData.from_arrays(users, items, timestamps, splits, n_users, n_items, name="synthetic-1m")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=60_000)
    parser.add_argument("--items", type=int, default=25_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")
    parser.add_argument("--name", help="write docs/benchmarks/<name>.json")
    args = parser.parse_args(argv)

    cfg = load_config(overrides=["train.progress=false", *args.overrides])
    data = clustered_graph(args.users, args.items, args.edges, args.clusters)
    seed_everything(cfg.train.seed)
    model = build_lightgcn(data, cfg.gnn)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_bpr(model, data, cfg.gnn, cfg.train, cfg.eval.ks, None, name="lightgcn-1m")
    total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    history = result.history
    trace, train_wall, train_cpu = [], 0.0, 0.0
    for entry in history:  # training seconds only; validations add wall_seconds_total - train time
        train_wall += entry["seconds"]
        train_cpu += entry["cpu_seconds"]
        if "valid" in entry:
            trace.append({"epoch": entry["epoch"], "train_wall_s": round(train_wall, 1),
                          "train_cpu_s": round(train_cpu, 1), "NDCG@20": entry["valid"]["NDCG@20"]})
    best = result.best_valid["NDCG@20"]

    def reached(share: float) -> dict | None:
        return next((t for t in trace if t["NDCG@20"] >= share * best), None)

    test = evaluate_split(data, EmbeddingRanker(*model.propagate()), data.TEST, cfg.eval.ks, cfg.gnn.eval_batch_size)
    report = {
        "graph": {"users": data.n_users, "items": data.n_items, "train_edges": int(len(data.train_pairs[0])),
                  "clusters": args.clusters},
        "settings": {"refresh_every": cfg.gnn.refresh_every, "batch_size": cfg.gnn.batch_size, "lr": cfg.gnn.lr,
                     "patience": cfg.gnn.patience, "eval_every": cfg.gnn.eval_every, "max_epochs": cfg.gnn.max_epochs},
        "best_epoch": result.best_epoch, "epochs": result.epochs, "best_valid_NDCG@20": best,
        "reached_95pct": reached(0.95), "reached_99pct": reached(0.99),
        "wall_seconds_total": total_wall, "cpu_seconds_total": total_cpu,
        "test": test, "validations": trace, "load_average": os.getloadavg(),
    }  # fmt: skip
    if args.name:
        command = " ".join(["python -m tokenrec.bench.gnn_convergence", *(argv or sys.argv[1:])])
        write_result(args.name, report, command=command)
    print(json.dumps({**report, "machine": machine()}, indent=1)[:3000])


if __name__ == "__main__":
    main()

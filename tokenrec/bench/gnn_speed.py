"""Seconds per LightGCN training epoch on a snapshot or on a synthetic power-law graph.

    python -m tokenrec.bench.gnn_speed --snapshot var/bench/beauty/lake/interactions/snapshot_date=2026-11-27
    python -m tokenrec.bench.gnn_speed --synthetic 60000 25000 1000000 --epochs 2

Prints one JSON object (or, with ``--name``, writes ``docs/benchmarks/<name>.json``): graph size, settings,
wall and CPU seconds of each epoch (training only, batch ``gnn.batch_size``; exact propagation per batch unless
``--set gnn.refresh_every=k``), the load average and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from tokenrec.bench.machine import machine, write_result
from tokenrec.config import load_config
from tokenrec.data.interactions import InteractionData
from tokenrec.training.device import pick_device, seed_everything, torch_threads
from tokenrec.training.gnn import NegativeSampler, build_lightgcn, run_bpr_epoch


def synthetic_graph(n_users: int, n_items: int, edges: int, seed: int = 0) -> InteractionData:
    """Training-only interactions: item popularity ~ rank^-0.8, user activity log-normal, no repeated pairs."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation((np.arange(n_items) + 1.0) ** -0.8)
    activity = rng.lognormal(0.0, 1.0, n_users)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < edges:  # popular pairs repeat: draw until enough distinct ones
        draw = 2 * (edges - len(keys)) + 1000
        users = rng.choice(n_users, draw, p=activity / activity.sum())
        items = rng.choice(n_items, draw, p=popularity / popularity.sum())
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_items + items]))
    keys = rng.permutation(keys)[:edges]
    users, items = keys // n_items, keys % n_items
    zeros = np.zeros(len(users), dtype=np.int64)
    return InteractionData.from_arrays(users, items, zeros, zeros, n_users, n_items, name="synthetic")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--snapshot", help="interactions snapshot folder")
    source.add_argument("--synthetic", nargs=3, type=int, metavar=("USERS", "ITEMS", "EDGES"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")
    parser.add_argument("--name", help="also write docs/benchmarks/<name>.json (e.g. speed-lightgcn-beauty)")
    args = parser.parse_args(argv)

    cfg = load_config(overrides=args.overrides)
    data = InteractionData.load(args.snapshot) if args.snapshot else synthetic_graph(*args.synthetic)
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = build_lightgcn(data, cfg.gnn).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.gnn.lr, fused=device.type in ("cpu", "cuda"))
    users, items = data.train_pairs
    sampler = NegativeSampler(users, items, data.n_items)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        with torch_threads(1, device):
            loss, _ = run_bpr_epoch(
                model, optimizer, sampler, users, items, cfg.gnn, cfg.train.seed, epoch, device
            )
        epochs.append(
            {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "loss": loss}
        )
    report = {
        "graph": {"users": data.n_users, "items": data.n_items, "train_edges": int(len(users))},
        "batch_size": cfg.gnn.batch_size,
        "layers": cfg.gnn.layers,
        "dim": cfg.gnn.dim,
        "refresh_every": cfg.gnn.refresh_every,
        "sparse_threads": model.threads,
        "epochs": epochs,
        "load_average": os.getloadavg(),
    }
    if args.name:
        command = " ".join(
            ["python -m tokenrec.bench.gnn_speed", *(argv if argv is not None else sys.argv[1:])]
        )
        write_result(args.name, report, command=command)
    else:
        print(json.dumps({**report, "machine": machine()}, indent=2))


if __name__ == "__main__":
    main()

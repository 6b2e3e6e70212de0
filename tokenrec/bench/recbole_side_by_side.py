"""LightGCN training epoch: ours against RecBole's, side by side on the same training edges in one run.

    python -m tokenrec.bench.recbole_side_by_side \\
        --snapshot var/bench/beauty/lake/interactions/snapshot_date=2026-11-27 \\
        --recbole-python /tmp/recbole-venv/bin/python --epochs 3 --name speed-lightgcn-vs-recbole-beauty

RecBole 1.2.1 with its dependencies does not fit the project's lock (it pins old colorlog/colorama and pulls
ray, tensorboard, plotly), so it runs in a scratch virtual environment made once with

    python3.11 -m venv /tmp/recbole-venv && /tmp/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.1

and is driven in a subprocess by the script below. Both sides get the snapshot's training edges only, the same
settings (d = 64, 3 layers, batch 2048, one uniform negative, Adam lr 1e-3, L2 1e-4) and the same CPU threads,
and both time training epochs only (no evaluation): ours with :func:`tokenrec.training.gnn.run_bpr_epoch`,
RecBole's with its ``Trainer._train_epoch``. Each side runs its epochs back to back, ours first; the load
average is recorded with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokenrec.bench.machine import machine, write_result
from tokenrec.config import load_config
from tokenrec.data.interactions import InteractionData
from tokenrec.training.device import seed_everything, torch_threads
from tokenrec.training.gnn import NegativeSampler, build_lightgcn, run_bpr_epoch

# Runs inside the RecBole environment: argv = data folder, epochs, threads. Prints one JSON line.
RECBOLE_SCRIPT = r"""
import json, sys, time
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import LightGCN
from recbole.trainer import Trainer
from recbole.utils import init_seed

folder, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
config = Config(model="LightGCN", dataset="bench", config_dict={
    "data_path": folder, "benchmark_filename": ["train", "valid", "test"],
    "load_col": {"inter": ["user_id", "item_id"]},
    "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
    "embedding_size": 64, "n_layers": 3, "reg_weight": 1e-4, "learning_rate": 1e-3,
    "train_batch_size": 2048, "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
    "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
    "epochs": epochs, "device": "cpu", "use_gpu": False, "show_progress": False, "seed": 0,
    "state": "WARNING", "checkpoint_dir": folder + "/saved",
})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, _, _ = data_preparation(config, dataset)
model = LightGCN(config, train_data.dataset).to("cpu")
trainer = Trainer(config, model)
seconds, losses = [], []
for epoch in range(epochs):
    started = time.perf_counter()
    loss = trainer._train_epoch(train_data, epoch, show_progress=False)
    seconds.append(time.perf_counter() - started)
    losses.append(float(loss if not isinstance(loss, tuple) else sum(loss)))
print(json.dumps({"seconds": seconds, "losses": losses, "users": dataset.user_num - 1,
                  "items": dataset.item_num - 1, "train_edges": len(train_data.dataset)}))
"""


def write_atomic_files(data: InteractionData, folder: Path) -> None:
    """RecBole's benchmark files ``bench.{train,valid,test}.inter`` from the snapshot's splits."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", data.TRAIN), ("valid", data.VALID), ("test", data.TEST)):
        mask = data.splits == split
        lines = ["user_id:token\titem_id:token"]
        lines += [f"u{u}\ti{i}" for u, i in zip(data.users[mask].tolist(), data.items[mask].tolist(), strict=True)]
        (folder / f"bench.{name}.inter").write_text("\n".join(lines) + "\n")


def time_ours(data: InteractionData, epochs: int) -> list[float]:
    cfg = load_config(overrides=["train.progress=false"])
    seed_everything(cfg.train.seed)
    model = build_lightgcn(data, cfg.gnn)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.gnn.lr, fused=True)
    users, items = data.train_pairs
    sampler = NegativeSampler(users, items, data.n_items)
    seconds = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        with torch_threads(1, torch.device("cpu")):
            run_bpr_epoch(model, optimizer, sampler, users, items, cfg.gnn, cfg.train.seed, epoch, torch.device("cpu"))
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path, help="interactions snapshot folder")
    parser.add_argument("--recbole-python", required=True, help="python of a venv with recbole==1.2.1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--name", help="write docs/benchmarks/<name>.json")
    args = parser.parse_args(argv)

    data = InteractionData.load(args.snapshot)
    threads = os.cpu_count() or 1
    ours = time_ours(data, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        write_atomic_files(data, Path(tmp) / "bench")
        done = subprocess.run(
            [args.recbole_python, "-c", RECBOLE_SCRIPT, tmp, str(args.epochs), str(threads)],
            capture_output=True, text=True, check=False, cwd=tmp,  # RecBole writes log folders into cwd
        )
    if done.returncode:
        raise SystemExit(f"RecBole failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    recbole = json.loads(done.stdout.strip().splitlines()[-1])
    version = subprocess.run(
        [args.recbole_python, "-c", "import recbole, torch; print(recbole.__version__, torch.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    report = {
        "dataset": data.name,
        "graph": {"users": data.n_users, "items": data.n_items, "train_edges": int(len(data.train_pairs[0]))},
        "settings": "d=64, 3 layers, batch 2048, 1 uniform negative, Adam lr 1e-3, L2 1e-4, training epochs only",
        "ours_seconds_per_epoch": ours,
        "recbole_seconds_per_epoch": recbole["seconds"],
        "recbole_graph": {k: recbole[k] for k in ("users", "items", "train_edges")},
        "recbole_version": version[0],
        "recbole_torch": version[1],
        "ratio_median": float(np.median(recbole["seconds"]) / np.median(ours)),
        "load_average": os.getloadavg(),
    }
    if args.name:
        command = " ".join(["python -m tokenrec.bench.recbole_side_by_side", *(argv or sys.argv[1:])])
        write_result(args.name, report, command=command)
    print(json.dumps({**report, "machine": machine()}, indent=2))


if __name__ == "__main__":
    main()

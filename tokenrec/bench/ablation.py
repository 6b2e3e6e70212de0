"""TokenRec ablation, sampling x loss x scoring on one data set: ``docs/benchmarks/ablation-tokenrec-<dataset>.json``.

    python -m tokenrec.bench.ablation --dataset ml100k --profile bench-cpu \\
        --snapshot var/bench/ml100k/lake/interactions/snapshot_date=2026-11-27 \\
        --gnn-run var/bench/ml100k/runs/quality-bench-cpu --run-dir var/bench/ml100k/runs/ablation \\
        --cells causal-softmax sampled-hinge

Each cell trains LLM4Rec once on the LightGCN and MQ-Tokenizers of ``--gnn-run`` (linked, never retrained, so
the cells differ in the LLM4Rec training alone) and scores the selected epoch twice on the same split (full
ranking, seen items excluded, the epoch selected on validation NDCG@20 with the profile's scoring):

- ``llm.training``: ``causal`` (every next item of a window is a target, one pass) or ``sampled`` (the paper:
  one prompt per (history prefix, next item) sample, ``--prefixes-per-user`` samples per user and epoch);
- ``llm.loss``: ``softmax`` (full catalogue) or ``hinge`` (the paper's cosine plus hinge on sampled negatives);
- scoring: ``ours`` (the profile's ``retrieval`` settings, the ``tokenrec`` row of a quality file) and
  ``paper`` (cosine against the item vectors, no user-token vector: ``tokenrec_paper_scoring``).

A cell already in the result file is replaced; the others are kept, each with its own command, commit and date,
so cells can be added one at a time. Choose on validation only; the test columns are reported, not used.

A cell that ``--gnn-run`` itself trained (its ``llm/config.yaml`` holds the cell's ``llm`` and ``retrieval``
settings, and its evaluation scored it both ways: a quality run of the same profile) is read from there instead
of being trained a second time; its row says so (``reused_from``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tokenrec.bench.machine import RESULTS, add_run_arguments, git_commit, write_result
from tokenrec.bench.tokenrec_sweep import link
from tokenrec.cli import build_config
from tokenrec.config import LLM_LOSSES, LLM_TRAININGS, Config
from tokenrec.run_folder import CONFIG_FILE, LLM, RunFolder
from tokenrec.storage import read_json
from tokenrec.tasks import evaluate, train_llm

TRAININGS = ("causal", "sampled")
LOSSES = ("softmax", "hinge")
CELLS = tuple(f"{training}-{loss}" for training in TRAININGS for loss in LOSSES)
SCORINGS = {"ours": "tokenrec", "paper": "tokenrec_paper_scoring"}  # scoring -> evaluation model
log = logging.getLogger(__name__)


def cell_overrides(cell: str, prefixes_per_user: int) -> list[str]:
    """The ``--set`` overrides that make ``cell`` (``<training>-<loss>``) of the grid."""
    training, _, loss = cell.partition("-")
    if training not in LLM_TRAININGS or loss not in LLM_LOSSES:
        raise SystemExit(
            f"--cells: {cell!r} is not <training>-<loss> with training in {LLM_TRAININGS} and "
            f"loss in {LLM_LOSSES}; for example {', '.join(CELLS)}"
        )
    per_user = prefixes_per_user if training == "sampled" else 0  # causal: every window of every user
    return [f"llm.training={training}", f"llm.loss={loss}", f"llm.samples_per_user={per_user}",
            "eval.baselines=[" + ", ".join(SCORINGS.values()) + "]"]  # fmt: skip


def cell_row(cell: str, run: RunFolder, seconds: float) -> dict[str, Any]:
    """One cell's result: both scorings' valid/test metrics and how the selected epoch was trained."""
    scored = read_json(run.eval_metrics)
    history = read_json(run.history(LLM))
    llm = read_json(run.metrics(LLM))
    trained = [h for h in history if h.get("samples")]
    targets = sum(h.get("targets", h["samples"]) for h in trained)
    training, _, loss = cell.partition("-")
    return {
        "training": training,
        "loss": loss,
        "scoring": {scoring: scored[model] for scoring, model in SCORINGS.items()},
        "best_epoch": llm["best_epoch"],
        "epochs": llm["epochs"],
        "targets_per_epoch": targets / max(1, len(trained)),
        "targets_per_second": targets / max(1e-9, sum(h["seconds"] for h in trained)),
        "seconds": seconds,
        "history": history,
    }


def trained_by(run: RunFolder, cfg: Config) -> bool:
    """Whether ``run`` trained LLM4Rec with ``cfg``'s ``llm`` and ``retrieval`` settings and scored it both ways."""
    saved = run.stage(LLM) / CONFIG_FILE
    if not (saved.is_file() and run.eval_metrics.is_file() and run.history(LLM).is_file()):
        return False
    trained = yaml.safe_load(saved.read_text())
    wanted = cfg.to_dict()
    scored = read_json(run.eval_metrics)
    return (
        all(trained.get(section) == wanted[section] for section in ("llm", "retrieval"))
        and all(model in scored for model in SCORINGS.values())
    )


def merge(earlier: dict[str, Any] | None, dataset: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The result file's ``results``: the earlier cells, those of this run replacing theirs, in grid order."""
    cells = dict(earlier["cells"]) if earlier else {}
    if earlier and earlier.get("dataset") != dataset:
        raise SystemExit(f"ablation file holds data set {earlier.get('dataset')!r}, this run is {dataset!r}")
    cells.update(rows)
    ordered = {name: cells[name] for name in (*CELLS, *sorted(set(cells) - set(CELLS))) if name in cells}
    best = max(ordered, key=lambda n: max(r["valid"]["NDCG@20"] for r in ordered[n]["scoring"].values()))
    return {
        "dataset": dataset,
        "note": "Rows: LLM4Rec training x loss; each scored two ways on the same trained model. Choose on "
        "validation only. Each cell lists its own command, commit and date, and the LightGCN run it used.",
        "selected_on_validation": best,
        "cells": ordered,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--gnn-run",
        required=True,
        type=Path,
        help="run folder whose gnn/ and tokenizer/ every cell uses (e.g. a quality run)",
    )
    parser.add_argument(
        "--cells", nargs="+", default=list(CELLS), help=f"cells to train (default all: {CELLS})"
    )
    parser.add_argument(
        "--prefixes-per-user",
        type=int,
        default=12,
        help="sampled cells: (prefix, next item) samples per user and epoch, redrawn each epoch",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = RunFolder(args.gnn_run)
    for needed in (base.gnn, base.tokenizer):
        if not needed.is_dir():
            raise SystemExit(
                f"--gnn-run {args.gnn_run}: {needed} is missing; run the quality benchmark first"
            )

    grid = {
        cell: cell_overrides(cell, args.prefixes_per_user) for cell in args.cells
    }  # a typo fails before training
    rows: dict[str, dict[str, Any]] = {}
    for cell, settings in grid.items():
        overrides = [*args.overrides, *settings]
        cfg = build_config(argparse.Namespace(**{**vars(args), "overrides": overrides}))
        run = RunFolder(args.run_dir / cell)
        reused = trained_by(base, cfg)
        if reused:
            log.info("%s: %s trained and scored it already; read from there", cell, args.gnn_run)
            run = base
            seconds = sum(h.get("seconds", 0.0) for h in read_json(run.history(LLM)))  # training only
        else:
            run.root.mkdir(parents=True, exist_ok=True)
            link(base.gnn, run.gnn)
            link(base.tokenizer, run.tokenizer)
            started = time.perf_counter()
            train_llm.run(cfg, args.snapshot, run.root)
            evaluate.run(cfg, args.snapshot, run.root)
            seconds = time.perf_counter() - started
        rows[cell] = {
            **cell_row(cell, run, seconds),
            **({"reused_from": str(args.gnn_run)} if reused else {}),
            "gnn_run": str(args.gnn_run),
            "command": " ".join(
                ["python -m tokenrec.bench.ablation", *(argv if argv is not None else sys.argv[1:])]
            ),
            "commit": git_commit(),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
        dataset = read_json(run.eval_metrics)["dataset"]
        path = RESULTS / f"ablation-tokenrec-{dataset}.json"
        earlier = read_json(path)["results"] if path.is_file() else None
        write_result(path.stem, merge(earlier, dataset, rows), command="see each cell's command")
    print(json.dumps({c: {s: r["scoring"][s]["test"] for s in SCORINGS} for c, r in rows.items()})[:3000])


if __name__ == "__main__":
    main()

"""LLM4Rec training throughput on a real run: learned targets per second, sampled prefixes vs causal windows.

    python -m tokenrec.bench.llm_training_speed --dataset ml100k --profile bench-cpu \\
        --snapshot var/bench/ml100k/lake/interactions/snapshot_date=2026-11-27 \\
        --run-dir var/bench/ml100k/runs/quality-bench-cpu --name speed-llm-training-cpu

Each configuration (``--configs``, each a list of ``section.key=value`` settings on top of the profile) trains
one epoch of the real trainer (:class:`tokenrec.training.llm.LlmTrainer`, the code path of ``train-llm``) on
``--prompts-per-user`` prompts per user (``llm.samples_per_user``) from a freshly loaded backbone, on the run's
GNN targets and ID tokens, and reports prompts per second and *targets* per second: a sampled prompt teaches
one next item, a causal window every item it holds. Everything else (backbone, history length, batch size) is
the profile's, so the configurations differ only in what they name. No validation, nothing written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import numpy as np
import torch

from tokenrec.bench.machine import add_run_arguments, write_result
from tokenrec.cli import build_config
from tokenrec.config import load_config
from tokenrec.tasks import train_llm
from tokenrec.training.device import autocast_dtype, pick_device
from tokenrec.training.llm import LlmTrainer, Ranks

CONFIGS = {
    "sampled-hinge-fp32": ["llm.training=sampled", "llm.loss=hinge", "llm.precision=fp32"],
    "sampled-hinge-bf16": ["llm.training=sampled", "llm.loss=hinge", "llm.precision=bf16"],
    "causal-softmax-fp32": ["llm.training=causal", "llm.loss=softmax", "llm.precision=fp32"],
    "causal-softmax-bf16": ["llm.training=causal", "llm.loss=softmax", "llm.precision=bf16"],
    "causal-sampled_softmax-bf16": ["llm.training=causal", "llm.loss=sampled_softmax", "llm.precision=bf16"],
}


def measure(args: argparse.Namespace, name: str, settings: list[str]) -> dict[str, Any]:
    """One epoch of ``settings`` (on top of the command's config) through the real trainer."""
    layers = [*args.overrides, *settings, f"llm.samples_per_user={args.prompts_per_user}"]
    cfg = build_config(argparse.Namespace(**{**vars(args), "overrides": layers}))
    inputs = train_llm.prepare(cfg, args.snapshot, args.run_dir)
    device = pick_device(cfg.train.device)
    trainer = LlmTrainer(inputs.model, inputs.vocab, inputs.data, inputs.tables, cfg.llm, cfg.train, device,
                         cfg.eval.ks, None, Ranks(), cfg.retrieval, inputs.user_decoder)  # fmt: skip
    entry = trainer.run_epoch(1)
    lengths = trainer.samples.lengths()
    return {
        "config": name,
        "settings": settings,
        "precision": str(autocast_dtype(device, cfg.llm.precision) or "fp32"),
        "prompts": entry["samples"],
        "targets": entry["targets"],
        "seconds": entry["seconds"],
        "prompts_per_second": entry["samples_per_second"],
        "targets_per_second": entry["targets_per_second"],
        "loss": entry["loss"],
        "history_items_per_prompt": float(np.mean(lengths)),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--prompts-per-user", type=int, default=1, help="llm.samples_per_user of each epoch")
    parser.add_argument("--name", help="write docs/benchmarks/<name>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_config(overrides=args.overrides)  # fail early on a bad --set
    rows = []
    for name in args.configs:
        row = measure(args, name, CONFIGS[name])
        print(json.dumps(row), flush=True)
        rows.append(row)
    by_name = {row["config"]: row for row in rows}
    speedups = {}
    if "sampled-hinge-fp32" in by_name:
        base = by_name["sampled-hinge-fp32"]["targets_per_second"]
        speedups = {name: row["targets_per_second"] / base for name, row in by_name.items()}
    report = {"dataset": args.dataset, "profile": args.profile, "overrides": args.overrides, "runs": rows,
              "targets_per_second_vs_sampled_hinge_fp32": speedups, "load_average": os.getloadavg()}  # fmt: skip
    command = " ".join(["python -m tokenrec.bench.llm_training_speed", *(argv if argv is not None else sys.argv[1:])])
    if args.name:
        write_result(args.name, report, command=command)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

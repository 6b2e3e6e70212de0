"""Quality benchmark of the baselines: LightGCN (train-gnn) and every model of ``eval.baselines`` (evaluate).

    python -m tokenrec.bench.quality --snapshot var/bench/lastfm/lake/interactions/snapshot_date=2026-11-27 \\
        --run-dir var/bench/lastfm/runs/baselines

Runs the two stages exactly as the pipeline does (same split, full ranking, exclusion, selection on
validation) and writes ``docs/benchmarks/quality-baselines-<dataset>.json``: the evaluate stage's
``metrics.json``, the seconds each stage took, the command, the commit, the machine and the date. ``--set section.key=value`` overrides the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from tokenrec.bench.machine import write_result
from tokenrec.config import load_config
from tokenrec.tasks import evaluate, train_gnn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--snapshot", required=True, type=Path, help="interactions snapshot folder")
    parser.add_argument("--run-dir", required=True, type=Path, help="run folder (gnn/ and eval/ go here)")
    parser.add_argument(
        "--name", help="result name: docs/benchmarks/<name>.json (default quality-baselines-<dataset>)"
    )
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")
    parser.add_argument("--skip-gnn", action="store_true", help="reuse run-dir/gnn from an earlier run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    cfg = load_config(args.config, args.overrides)
    seconds: dict[str, float] = {}
    if not args.skip_gnn:
        started = time.perf_counter()
        train_gnn.run(cfg, args.snapshot, args.run_dir)
        seconds["train_gnn"] = time.perf_counter() - started
    started = time.perf_counter()
    evaluate.run(cfg, args.snapshot, args.run_dir)
    seconds["evaluate"] = time.perf_counter() - started
    metrics = json.loads((args.run_dir / evaluate.EVAL_DIR / evaluate.METRICS_FILE).read_text())
    gnn_metrics = json.loads((args.run_dir / train_gnn.GNN_DIR / "metrics.json").read_text())
    document = {
        **metrics,
        "lightgcn_training": {k: gnn_metrics[k] for k in ("best_epoch", "epochs", "seconds_per_epoch")},
        "seconds": seconds,
        "overrides": args.overrides,
    }
    command = " ".join(["python -m tokenrec.bench.quality", *(argv if argv is not None else sys.argv[1:])])
    write_result(args.name or f"quality-baselines-{metrics['dataset']}", document, command=command)


if __name__ == "__main__":
    main()

"""TokenRec configurations tried on one data set, selected on validation: ``sweep-tokenrec-<dataset>.json``.

    python -m tokenrec.bench.tokenrec_sweep --dataset lastfm --profile bench-cpu --config-name negatives-32 \\
        --snapshot var/bench/lastfm/lake/interactions/snapshot_date=2026-11-27 \\
        --gnn-run var/bench/lastfm/runs/quality-bench-cpu --run-dir var/bench/lastfm/runs/sweep \\
        --set llm.num_negatives=32 --set llm.in_batch_negatives=true

One call trains one configuration: the MQ-Tokenizers (those of ``--gnn-run`` when it has them and no
``tokenizer.*`` setting is given, else trained and cached per tokenizer setting under ``--run-dir``) and
LLM4Rec on a trained LightGCN (``--gnn-run``, shared by every configuration so that only the TokenRec settings
differ), then records its validation and test metrics, epochs and training samples/s as one row of
``docs/benchmarks/sweep-tokenrec-<dataset>.json`` (a row with the same name is replaced; each row keeps its own
command, commit and date). Choose between rows on validation only; the test columns are reported, not used.
``--resume`` keeps the row's folder: a copy of another row's folder with a larger ``llm.max_epochs`` trains only
the epochs it lacks (the checkpoint fingerprint leaves the epoch count out, and the learning rate is constant
after warm-up, so this equals training all epochs in one go).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from tokenrec.bench.machine import RESULTS, add_run_arguments, git_commit, write_result
from tokenrec.cli import build_config
from tokenrec.run_folder import GNN, LLM, RunFolder
from tokenrec.storage import read_json
from tokenrec.tasks import train_llm, train_tokenizer


def link(target: Path, at: Path) -> None:
    if at.is_symlink() or at.exists():
        at.unlink()
    at.symlink_to(target.resolve())


def gnn_summary(gnn_run: Path) -> dict[str, Any]:
    """Which LightGCN a row was trained on: its run folder and validation metrics (rows may differ in it)."""
    found = RunFolder(gnn_run).metrics(GNN)
    metrics = read_json(found) if found.is_file() else {}
    return {"run": str(gnn_run), "valid": metrics.get("valid", {})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--gnn-run", required=True, type=Path, help="run folder whose gnn/ every config uses")
    parser.add_argument("--config-name", required=True, help="row name in the result file")
    parser.add_argument("--resume", action="store_true",
                        help="keep the row's run folder and resume its LLM4Rec checkpoints (e.g. more epochs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = build_config(args)

    tokenizer_settings = sorted(o for o in args.overrides if o.startswith("tokenizer."))
    tokenizer_key = hashlib.sha1(json.dumps(tokenizer_settings).encode()).hexdigest()[:8]
    gnn_run = RunFolder(args.gnn_run)
    tokenizer_run = RunFolder(args.run_dir / f"tokenizer-{tokenizer_key}")
    if not tokenizer_settings and gnn_run.tokenizer_manifest.is_file():
        tokenizer_run = gnn_run  # the --gnn-run's own tokenizers, as trained there
    elif not tokenizer_run.tokens.is_file():
        tokenizer_run.root.mkdir(parents=True, exist_ok=True)
        link(gnn_run.gnn, tokenizer_run.gnn)
        train_tokenizer.run(cfg, args.snapshot, tokenizer_run.root)
    run = RunFolder(args.run_dir / args.config_name)
    if not args.resume:
        shutil.rmtree(run.root, ignore_errors=True)
    run.root.mkdir(parents=True, exist_ok=True)
    link(gnn_run.gnn, run.gnn)
    link(tokenizer_run.tokenizer, run.tokenizer)
    train_llm.run(cfg, args.snapshot, run.root)

    metrics = read_json(run.metrics(LLM))
    history = read_json(run.history(LLM))
    trained = [h for h in history if "samples_per_second" in h]
    row: dict[str, Any] = {
        "name": args.config_name,
        "profile": args.profile,
        "overrides": args.overrides,
        "epochs": metrics.get("epochs"),
        "best_epoch": metrics.get("best_epoch"),
        "valid": metrics["tokenrec"]["valid"],
        "test": metrics["tokenrec"]["test"],
        "samples_per_second": sum(h["samples_per_second"] for h in trained) / max(1, len(trained)),
        "gnn": gnn_summary(args.gnn_run),
        "history": history,
        "command": " ".join(["python -m tokenrec.bench.tokenrec_sweep", *(argv or sys.argv[1:])]),
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    name = f"sweep-tokenrec-{metrics['dataset']}"
    path = RESULTS / f"{name}.json"
    earlier = read_json(path)["results"] if path.is_file() else {"runs": []}
    runs = [r for r in earlier["runs"] if r["name"] != row["name"]]
    runs.append(row)
    best = max(runs, key=lambda r: r["valid"]["NDCG@20"])
    results = {
        "dataset": metrics["dataset"],
        "note": f"Selected on validation NDCG@20: {best['name']}. Each row lists its own command, commit, date "
        "and the LightGCN run its tokens and retrieval targets come from.",
        "notes": earlier.get("notes", []),  # written by hand
        "selected": best["name"],
        "runs": runs,
    }
    write_result(name, results, command="see each row's command")


if __name__ == "__main__":
    main()

"""Quality benchmark: every model on one data set's frozen split, as ``docs/benchmarks/quality-<dataset>.json``.

    python -m tokenrec.bench.quality --dataset lastfm --profile bench-cpu \\
        --snapshot var/bench/lastfm/lake/interactions/snapshot_date=2026-11-27 --run-dir var/bench/lastfm/runs/q

Runs the pipeline's own stages in order on one snapshot (same split, full ranking, seen items excluded, model
selection on validation only): ``train-gnn`` (LightGCN), ``train-tokenizer`` (seconds to a minute; its
statistics are always reported), ``train-llm`` when the evaluated models include TokenRec, and finally
``evaluate`` with every model of ``eval.baselines`` (most-popular, MF, LightGCN, SASRec, the TokenRec variants). The result file holds the ``evaluate`` stage's
``metrics.json`` (DESIGN.md, "Machine-readable results"), LightGCN's training summary (selected epoch, epochs,
seconds per epoch, every seed when ``gnn.seeds`` > 1), the tokenizer statistics for users and items (usage and
perplexity per level, reconstruction error, entities sharing a code tuple), LLM4Rec's training history, the
seconds of each stage, the config layers used, the command, the commit, the machine and the date.
``--set section.key=value`` overrides the config; ``--skip`` reuses stages already in ``--run-dir``.

``--keep-earlier`` keeps the rows of models this run does not evaluate from the result file it replaces (a
costly baseline need not be retrained to add a row), only when that file has the same data set and protocol;
``carried_over`` names each kept row's command, commit and date.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tokenrec.bench.machine import RESULTS, add_run_arguments, write_result
from tokenrec.cli import build_config
from tokenrec.run_folder import EVAL, GNN, LLM, RunFolder
from tokenrec.storage import read_json
from tokenrec.tasks import evaluate, train_gnn, train_llm, train_tokenizer

STAGES = {"gnn": train_gnn, "tokenizer": train_tokenizer, "llm": train_llm, "evaluate": evaluate}
TOKENREC_MODELS = ("tokenrec", "tokenrec_id_only", "tokenrec_unseen_prompt", "tokenrec_paper_scoring")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--name", help="result name: docs/benchmarks/<name>.json (default quality-<dataset>)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(STAGES), help="reuse these stages' outputs")
    parser.add_argument("--keep-earlier", action="store_true",
                        help="keep the earlier result file's rows of models this run does not evaluate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    cfg = build_config(args)
    with_tokenrec = any(name in cfg.eval.baselines for name in TOKENREC_MODELS)
    seconds: dict[str, float] = {}
    for name, stage in STAGES.items():
        if name in args.skip or (name == "llm" and not with_tokenrec):  # the tokenizer is cheap: its stats always
            continue
        started = time.perf_counter()
        stage.run(cfg, args.snapshot, args.run_dir)
        seconds[name] = time.perf_counter() - started

    run = RunFolder(args.run_dir)
    metrics = read_json(run.metrics(EVAL))
    gnn = read_json(run.metrics(GNN))
    document: dict[str, Any] = {
        **metrics,
        "lightgcn_training": {k: gnn[k] for k in ("best_epoch", "epochs", "seconds_per_epoch", "seeds") if k in gnn},
        "seconds": seconds,
        "profile": args.profile,
        "overrides": args.overrides,
    }
    if run.tokenizer_stats.is_file():
        document["tokenizer_stats"] = read_json(run.tokenizer_stats)
    if with_tokenrec:
        document["llm_training"] = read_json(run.history(LLM))
    name = args.name or f"quality-{metrics['dataset']}"
    if args.keep_earlier:
        document = keep_earlier_rows(document, RESULTS / f"{name}.json")
    command = " ".join(["python -m tokenrec.bench.quality", *(argv if argv is not None else sys.argv[1:])])
    path = write_result(name, document, command=command)
    print(json.dumps({"written": str(path), **{m: v for m, v in metrics.items() if isinstance(v, dict)}})[:4000])


def is_row(value: Any) -> bool:
    """A model's metrics: ``{"valid": {...}, "test": {...}}``."""
    return isinstance(value, dict) and "valid" in value and "test" in value


def keep_earlier_rows(document: dict[str, Any], earlier_path: Path) -> dict[str, Any]:
    """``document`` plus the earlier file's rows of models it lacks, each with where it was measured."""
    if not earlier_path.is_file():
        raise SystemExit(f"--keep-earlier: {earlier_path} does not exist; run without --keep-earlier")
    earlier = read_json(earlier_path)
    old = earlier["results"]
    for field in ("dataset", "protocol"):
        if old.get(field) != document.get(field):
            raise SystemExit(
                f"--keep-earlier: {earlier_path} field '{field}' is {old.get(field)!r}, this run's is "
                f"{document.get(field)!r}; rows from another split cannot share a table: run without --keep-earlier"
            )
    where = {key: earlier[key] for key in ("command", "commit", "date")}
    carried = {}
    for model, row in old.items():
        if is_row(row) and model not in document:
            carried[model] = old.get("carried_over", {}).get(model, where)
            document[model] = row
    return {**document, "carried_over": carried} if carried else document


if __name__ == "__main__":
    main()

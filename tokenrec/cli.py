"""``tokenrec <stage> ...``: one command per pipeline task, and ``tokenrec run`` for the whole pipeline.

Every stage takes the same options: ``--ds`` (logical date), ``--dataset`` (a named data set preset),
``--config`` (YAML) and ``--set section.key=value`` (repeatable). Precedence: defaults < dataset preset <
YAML < --set. Expected failures (bad input, a failed gate) print one line naming the file, field and what to
do, and exit with status 2; Airflow marks the task failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from tokenrec import schema
from tokenrec.config import Config, load_config
from tokenrec.errors import TokenrecError
from tokenrec.run_folder import EVAL, GNN, LLM, TOKENIZER, RunFolder

log = logging.getLogger("tokenrec")

STAGES: dict[str, str] = {
    "etl": "Spark ETL: raw events -> staged interactions snapshot, quarantine, stable ID maps",
    "validate-interactions": "Great Expectations gate on the staged interactions snapshot; publishes it if it passes",
    "train-gnn": "train LightGCN on the snapshot's training split",
    "train-tokenizer": "train the user and item MQ-Tokenizers on the GNN embeddings",
    "train-llm": "fine-tune the LLM backbone + projection on prompts with the ID tokens (LLM4Rec)",
    "evaluate": "HR/NDCG@10/20/30 of TokenRec and the baselines on validation and test",
    "register": "package the retrain's model as one MLflow pyfunc, new version with alias challenger",
    "promote": "move alias champion to the challenger only if it passes the promotion gate",
    "batch-inference": "top-K for every active user from models:/tokenrec@champion, staged (not yet visible)",
    "validate-recommendations": "Great Expectations gate on the staged recommendations",
    "publish": "atomically publish the validated recommendations partition",
    "run": "the whole pipeline without Airflow: retrain, then the nightly inference",
    "show": "print the outputs of a date: recommendations with example users, champion, how to open the UIs",
    "report": "write the HTML report of a date's published recommendations (publish also writes it)",
}
TRAINING_STAGES = ("train-gnn", "train-tokenizer", "train-llm", "evaluate", "register", "promote", "run")
OTHER_COMMANDS = {
    "sql": "analyst queries over the lake: `tokenrec sql --list`, `tokenrec sql NAME --ds D` (docs/ANALYTICS.md)",
    "models": "registered model versions: aliases, gate outcome, gated metrics, rollback notes",
    "rollback": "move alias champion back to an earlier version that passed the gate: --to-version N --reason TEXT",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenrec",
        description="TokenRec offline batch recommendation pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {name:<24}{text}" for name, text in STAGES.items())
        + "\n\nother commands:\n" + "\n".join(f"  {name:<24}{text}" for name, text in OTHER_COMMANDS.items()),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--ds", required=True, help="logical date YYYY-MM-DD (the snapshot / output partition)")
        _add_config_arguments(p)
        if name in TRAINING_STAGES:
            p.add_argument("--run-id", help="retrain run folder name under paths.runs (default <dataset>-<ds>)")
        if name == "batch-inference":
            p.add_argument("--engine", choices=("local", "spark"),
                           help="local: this process; spark: users over Spark executors "
                           "(same as --set inference.engine=...)")
    return parser


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The config layers every command takes: --dataset, --profile, --config, --set."""
    p.add_argument("--dataset", help="named data set preset: ml100k, lastfm, beauty (or your own name)")
    p.add_argument("--profile", help="a shipped config profile: demo (CPU, minutes) or full (paper sizes, GPU)")
    p.add_argument("--config", help="YAML file with config sections (see docs/CONFIG.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set etl.kcore=10 (repeatable)")


def build_config(args: argparse.Namespace) -> Config:
    """defaults < dataset preset < profile < --config YAML < --set."""
    from tokenrec.data.datasets import preset

    base: dict[str, Any] = preset(args.dataset) if args.dataset else {}
    if args.profile:
        base = _merge(base, profile(args.profile))
    engine = [f"inference.engine={args.engine}"] if getattr(args, "engine", None) else []
    return load_config(args.config, [*args.overrides, *engine], base=base or None)


def profile(name: str) -> dict[str, Any]:
    """The config layer of a shipped profile (``tokenrec/profiles/<name>.yaml``)."""
    import yaml

    folder = Path(__file__).parent / "profiles"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise TokenrecError(f"--profile {name!r} does not exist; choose one of {names}")
    return yaml.safe_load(path.read_text()) or {}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _run_dir(cfg: Config, args: argparse.Namespace) -> Path:
    run_id = getattr(args, "run_id", None) or f"{cfg.source.dataset}-{args.ds}"
    if "/" in run_id or run_id.startswith("."):
        raise TokenrecError(f"--run-id {run_id!r} must be a plain folder name (no '/' or leading '.')")
    return Path(cfg.paths.runs) / run_id


def _snapshot(cfg: Config, ds: str) -> Path:
    return schema.Lake.at(cfg.paths.lake).interactions(ds)


# ------------------------------------------------------------------------------------------------ stages
# One handler per stage; each imports its task module when it runs, so a stage pays only for what it uses
# (the training tasks import torch and transformers, the ETL only Spark).


def stage_etl(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import etl

    return etl.run(cfg, args.ds)


def stage_validate_interactions(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import validate_interactions

    return validate_interactions.run(cfg, args.ds)


def stage_train_gnn(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import train_gnn

    return _training_stage(train_gnn.run, "train-gnn", GNN, cfg, args)


def stage_train_tokenizer(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import train_tokenizer

    return _training_stage(train_tokenizer.run, "train-tokenizer", TOKENIZER, cfg, args)


def stage_train_llm(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import train_llm

    return _training_stage(train_llm.run, "train-llm", LLM, cfg, args)


def stage_evaluate(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import evaluate

    return _training_stage(evaluate.run, "evaluate", EVAL, cfg, args)


def stage_register(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import register

    return register.run(cfg, args.ds, _run_dir(cfg, args))


def stage_promote(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import promote

    return promote.run(cfg, args.ds, _run_dir(cfg, args))


def stage_batch_inference(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import batch_inference

    return batch_inference.run(cfg, args.ds, None)


def stage_validate_recommendations(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import validate_recommendations

    return validate_recommendations.run(cfg, args.ds, None)


def stage_publish(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.tasks import publish

    return publish.run(cfg, args.ds, None)


def _training_stage(
    task: Callable[[Config, Path, Path], dict[str, Any]],
    stage: str,
    folder: str,
    cfg: Config,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run a training/evaluation ``task`` on the snapshot of ``args.ds``, then log its ``folder`` to MLflow."""
    from tokenrec.mlops.tracking import failing_retrain, log_stage

    snapshot, run = _snapshot(cfg, args.ds), RunFolder(_run_dir(cfg, args))
    with failing_retrain(cfg, run.run_id, stage, snapshot):  # failed stage: retrain run FAILED
        summary = task(cfg, snapshot, run.root)
        summary["mlflow_run_id"] = log_stage(cfg, run.run_id, stage, run.stage(folder), snapshot)
    return summary


RETRAIN = ("etl", "validate-interactions", "train-gnn", "train-tokenizer", "train-llm", "evaluate", "register", "promote")
NIGHTLY = ("etl", "validate-interactions", "batch-inference", "validate-recommendations", "publish")
PIPELINE = RETRAIN + NIGHTLY[2:]


def stage_show(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.reporting.show import show

    return {"text": show(cfg, args.ds)}


def stage_report(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from tokenrec.reporting.report import write_report

    return write_report(cfg, args.ds)


def stage_run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """The whole pipeline in one process, in DAG order (Airflow runs the same stages as separate tasks)."""
    summary: dict[str, Any] = {}
    for name in PIPELINE:
        log.info("== %s", name)
        summary[name] = HANDLERS[name](cfg, args)
    lake = schema.Lake.at(cfg.paths.lake)
    summary["outputs"] = {
        "interactions": str(lake.interactions(args.ds)),
        "quarantine": str(lake.quarantine(args.ds)),
        "id_maps": str(lake.id_map(schema.USERS).parent),
        "validation_report": str(lake.validation_report(schema.INTERACTIONS_TABLE, args.ds) / "data_docs" / "index.html"),
        "run_folder": str(_run_dir(cfg, args)),
        "recommendations": str(lake.recommendations(args.ds)),
    }
    return summary


HANDLERS: dict[str, Callable[[Config, argparse.Namespace], dict[str, Any]]] = {
    "etl": stage_etl,
    "validate-interactions": stage_validate_interactions,
    "train-gnn": stage_train_gnn,
    "train-tokenizer": stage_train_tokenizer,
    "train-llm": stage_train_llm,
    "evaluate": stage_evaluate,
    "register": stage_register,
    "promote": stage_promote,
    "batch-inference": stage_batch_inference,
    "validate-recommendations": stage_validate_recommendations,
    "publish": stage_publish,
    "run": stage_run,
    "show": stage_show,
    "report": stage_report,
}


def registry_main(command: str, argv: list[str]) -> int:
    """``tokenrec models`` and ``tokenrec rollback``: the registry without a logical date."""
    from tokenrec.mlops import registry

    parser = argparse.ArgumentParser(prog=f"tokenrec {command}", description=OTHER_COMMANDS[command])
    _add_config_arguments(parser)
    if command == "rollback":
        parser.add_argument("--to-version", type=int, required=True, help="the version to make champion again")
        parser.add_argument("--reason", required=True, help="why; stored on both versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(args)
        if command == "models":
            result: Any = registry.versions(cfg)
        else:
            result = registry.rollback(cfg, args.to_version, args.reason)
    except TokenrecError as exc:
        print(f"tokenrec {command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sql"]:
        from tokenrec.reporting.analytics import main as sql_main

        return sql_main(argv[1:])
    if argv[:1] in (["models"], ["rollback"]):
        return registry_main(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "no AVX2 build" probe is not an error
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # ~70 INFO lines of its own set-up per gate
    try:
        schema.parse_ds(args.ds)
        cfg = build_config(args)
        summary = HANDLERS[args.stage](cfg, args)
    except TokenrecError as exc:
        print(f"tokenrec {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    if args.stage == "show":
        print(summary["text"])
    else:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def process_main(argv: list[str] | None = None) -> NoReturn:
    """:func:`main` as the whole process (the ``tokenrec`` command and every ``jobs/*.py``): run, then exit.

    A job imports torch, transformers, MLflow and Spark's client; at exit, CPython's finalisation runs its cyclic
    collector over all of their objects, about 2 s per job on the 2-core CI machine (measured on train_tokenizer:
    9.0 s -> 7.3 s wall), and a DAG run starts 5 to 8 jobs. Everything the job produced is written and closed by
    then and atexit handlers still run, so the objects are frozen out of the collector before exiting. Not for
    callers that go on running (tests call :func:`main`).
    """
    code = main(argv)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    process_main()

"""Size of the packaged MLflow model, time to log it and time to load it in a fresh process, per backbone.

    TOKENREC_HOME=/tmp/h python -m tokenrec.bench.model_package --ds 2026-11-27 --dataset ml100k \\
        --profile demo --run-dir /tmp/h/runs/ml100k-2026-11-27 --backbones minilm smollm2 \\
        --name speed-model-package

Input: a finished run folder (``gnn/``, ``tokenizer/``, ``llm/``, e.g. from ``tokenrec run --profile demo``)
and its snapshot and ID maps in the lake of ``TOKENREC_HOME``. For each backbone the run's ``llm/`` is used
when it was trained with that backbone; otherwise an ``llm/`` with the same structure is written beside it
(the backbone with the run's ID tokens and a fresh projection, saved as ``train-llm`` saves, weights not
trained): size and load time depend on the shapes, not on the values, and the result says which was used.
``prepare_llm_s`` is the time to get that folder; for ``smollm2`` it includes, the first time only
(``prepare_llm_includes_gguf_conversion``), the conversion from GGUF into the backbone cache.

Per backbone, into the MLflow store of ``TOKENREC_HOME`` under the registered model
``<mlflow.registered_model>-bench-<backbone>`` (aliases of the real model are never touched):
``bundle_s`` (copy and check the run's files, :func:`tokenrec.mlops.packaging.build_bundle`), ``log_s``
(:func:`tokenrec.mlops.packaging.log_model` into a ``package`` run; MLflow also loads the model once there to
check the input example), ``register_s``; the logged model's bytes on disk, in total and per artifact; then
``--repeats`` fresh Python processes that each import MLflow and tokenrec (``import_s``), load
``models:/<name>/<version>`` (``load_s``: download from the artifact store, tokenizer-hash check, backbone
and index) and predict top-K for 8 users (``predict_s``), each also in CPU seconds (``*_cpu_s``, less
sensitive to a busy machine); ``process_s`` is the whole process, interpreter start included. The load
average is recorded with each measurement: on a shared machine the timings move with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from tokenrec import schema
from tokenrec.bench.machine import write_result
from tokenrec.cli import _merge, profile
from tokenrec.config import Config, load_config
from tokenrec.data.datasets import preset
from tokenrec.mlops import packaging, registry, tracking
from tokenrec.run_folder import GNN, TOKENIZER, RunFolder
from tokenrec.storage import read_json

log = logging.getLogger(__name__)

LOAD_SCRIPT = """
import json, sys, time
clock = [(time.perf_counter(), time.process_time())]
import mlflow, pandas as pd
import tokenrec.mlops.packaging
clock.append((time.perf_counter(), time.process_time()))
model = mlflow.pyfunc.load_model(sys.argv[1])
clock.append((time.perf_counter(), time.process_time()))
frame = model.predict(pd.DataFrame({"user_id": json.loads(sys.argv[2])}))
clock.append((time.perf_counter(), time.process_time()))
times = {}
for i, name in enumerate(("import", "load", "predict")):
    times[name + "_s"] = clock[i + 1][0] - clock[i][0]
    times[name + "_cpu_s"] = clock[i + 1][1] - clock[i][1]
print(json.dumps({**times, "rows": len(frame)}))
"""


def llm_for(cfg: Config, run_dir: Path, backbone: str, work: Path) -> tuple[Path, str]:
    """A run folder whose ``llm/`` uses ``backbone``, and how its weights came about (trained or initial)."""
    run = RunFolder(run_dir)
    if read_json(run.llm_manifest).get("base_backbone") == backbone:
        return run_dir, "trained (the run's own llm/)"
    import torch

    from tokenrec.llm.backbone import add_id_tokens, backbone_cache_dir, load_backbone
    from tokenrec.models.llm4rec import LLM4Rec
    from tokenrec.tasks.train_llm import save_model

    manifest = read_json(run.llm_manifest)
    target = RunFolder(work / f"{run_dir.name}-{backbone}")
    target.root.mkdir(parents=True)
    for stage in (GNN, TOKENIZER):
        target.stage(stage).symlink_to(run.stage(stage).resolve(), target_is_directory=True)
    llm_cfg = dataclasses.replace(cfg.llm, backbone=backbone)
    started = time.perf_counter()
    loaded = load_backbone(llm_cfg, backbone_cache_dir(cfg))  # smollm2: converted from GGUF on first use
    log.info("%s backbone ready in %.1f s", backbone, time.perf_counter() - started)
    torch.manual_seed(cfg.train.seed)
    vocab = add_id_tokens(loaded, manifest["levels"], manifest["codebook_size"], seed=cfg.train.seed)
    model = LLM4Rec(loaded, manifest["out_dim"], manifest["proj_hidden"])
    run_cfg = dataclasses.replace(cfg, llm=llm_cfg)
    save_model(
        model,
        vocab,
        run_cfg,
        target,
        manifest["item_vectors"],
        0,
        manifest["levels"],
        manifest["codebook_size"],
    )
    return target.root, "initial (same shapes and files as a trained llm/, weights not trained)"


def measure(cfg: Config, ds: str, run_dir: Path, backbone: str, repeats: int, work: Path) -> dict[str, Any]:
    """Package, log, register and load the model of ``run_dir`` with ``backbone``; sizes and seconds."""
    cfg = dataclasses.replace(
        cfg,
        llm=dataclasses.replace(cfg.llm, backbone=backbone),
        mlflow=dataclasses.replace(
            cfg.mlflow, registered_model=f"{cfg.mlflow.registered_model}-bench-{backbone}"
        ),
    )
    from tokenrec.llm.backbone import backbone_cache_dir

    converts = backbone == "smollm2" and not (backbone_cache_dir(cfg) / backbone / "config.json").is_file()
    started = time.perf_counter()
    source, weights = llm_for(cfg, run_dir, backbone, work)
    prepare_s = time.perf_counter() - started
    snapshot = schema.Lake.at(cfg.paths.lake).interactions(ds)
    retrain_id = f"bench-{backbone}-{ds}"
    result: dict[str, Any] = {
        "llm_weights": weights,
        "prepare_llm_s": round(prepare_s, 2),
        "prepare_llm_includes_gguf_conversion": converts,
    }
    with tempfile.TemporaryDirectory(prefix="tokenrec-bench-", dir=work) as tmp:
        t0 = time.perf_counter()
        bundle = packaging.build_bundle(cfg, source, snapshot, Path(tmp) / "bundle")
        t1 = time.perf_counter()
        with tracking.stage_run(cfg, retrain_id, "package", snapshot):
            uri = packaging.log_model(Path(tmp) / "bundle")
        t2 = time.perf_counter()
        version = registry.register(cfg, retrain_id, uri, {}, bundle["tokenizer_hash"])
        t3 = time.perf_counter()
    result.update(
        bundle_s=round(t1 - t0, 2),
        log_s=round(t2 - t1, 2),
        register_s=round(t3 - t2, 2),
        load_average_after_log=os.getloadavg()[0],
    )
    client, _ = tracking.connect(cfg)
    model_id = uri.removeprefix("models:/")
    stored = _local_path(client.get_logged_model(model_id).artifact_location)
    result["size_bytes"] = _size(stored)
    result["size_mib"] = round(result["size_bytes"] / 2**20, 1)
    result["size_mib_by_artifact"] = {
        entry.name: round(_size(entry) / 2**20, 2) for entry in sorted((stored / "artifacts").iterdir())
    }
    result["metadata_kib"] = round(
        sum(_size(p) for p in stored.iterdir() if p.name != "artifacts") / 2**10, 1
    )
    users = json.dumps(_first_users(stored, 8))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg), "PYTHONWARNINGS": "ignore"}
    loads = []
    for _ in range(repeats):
        before = os.getloadavg()[0]
        t0 = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(LOAD_SCRIPT),
                f"models:/{cfg.mlflow.registered_model}/{version}",
                users,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loading {backbone} in a fresh process failed:\n{done.stderr[-3000:]}")
        timing = json.loads(done.stdout.strip().splitlines()[-1])
        loads.append(
            {
                **{k: round(v, 2) for k, v in timing.items()},
                "process_s": round(time.perf_counter() - t0, 2),
                "load_average_before": before,
            }
        )
    result.update(model=f"models:/{cfg.mlflow.registered_model}/{version}", fresh_process=loads)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ds", required=True, help="the run's snapshot date")
    parser.add_argument("--run-dir", required=True, type=Path, help="a finished run folder")
    parser.add_argument("--backbones", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--repeats", type=int, default=2, help="fresh-process loads per backbone")
    parser.add_argument("--dataset", help="data set preset (ml100k, lastfm, beauty)")
    parser.add_argument("--profile", help="shipped config profile")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")
    parser.add_argument("--name", help="also write docs/benchmarks/<name>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base: dict[str, Any] = preset(args.dataset) if args.dataset else {}
    if args.profile:
        base = _merge(base, profile(args.profile))
    cfg = load_config(overrides=args.overrides, base=base or None)
    tracking.connect(cfg)  # creates the store and imports MLflow now, not inside the first timing
    results: dict[str, Any] = {"run": args.run_dir.name, "backbones": {}}
    with tempfile.TemporaryDirectory(prefix="tokenrec-bench-", dir=cfg.paths.home) as work:
        for backbone in args.backbones:
            log.info("== %s", backbone)
            results["backbones"][backbone] = measure(
                cfg, args.ds, args.run_dir, backbone, args.repeats, Path(work)
            )
    if args.name:
        command = " ".join(
            ["python -m tokenrec.bench.model_package", *(argv if argv is not None else sys.argv[1:])]
        )
        write_result(args.name, results, command=command)
    else:
        print(json.dumps(results, indent=2))


def _local_path(uri: str) -> Path:
    if not uri.startswith("file://"):
        raise ValueError(f"the benchmark measures a local artifact store, got {uri}")
    return Path(uri.removeprefix("file://"))


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def _first_users(stored: Path, count: int) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(next(stored.rglob(f"{schema.USERS}.parquet")))
    return [str(raw) for raw in table.column(schema.RAW_ID).to_pylist()[:count]]


if __name__ == "__main__":
    main()

"""Pipeline task ``batch_inference``: top-K recommendations of every active user for the logical date, staged.

Reads the published interactions snapshot of ``ds`` and the ID maps, loads ONE registered model version and
writes ``recommendations/dt=<ds>/`` in the exact ``RECOMMENDATIONS`` schema through
:func:`tokenrec.storage.stage_partition`: the new version is complete but not visible to readers until
``validate_recommendations`` passes and ``publish`` swaps it in.

Which model (RELIABILITY.md R7, one run = one model version):

- a date without output resolves ``inference.model_alias`` (``champion``) once and records the version;
- a rerun of a date that already has a staged or published output reuses the model name and version recorded
  in that output's manifest (``inference.rerun_model: recorded``, the default), so a retry or backfill of a
  date gives the same rows even if the alias moved since; ``rerun_model: alias`` recomputes the date with the
  alias's current version instead.

No champion, or a version whose tokenizer hash differs from its registry tag, fails at once with a clear
message. Rows depend on the inputs only: ``generated_at`` is the logical date at 00:00 UTC, never the clock.

Engines (``inference.engine``): ``local`` streams the users through this process in batches
(:func:`tokenrec.serving.recommender.write_recommendations`); ``spark`` spreads the same batches over Spark executors
(:mod:`tokenrec.serving.spark_engine`). Fold-in runs once, here, for both, and both write the same rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import InputError
from tokenrec.mlops import packaging, registry
from tokenrec.serving.known_ids import current_ids
from tokenrec.serving.recommender import (
    OutputMeta,
    Recommender,
    fold_in_bundle,
    write_recommendations,
)
from tokenrec.storage import current_version, is_published, read_json, stage_partition, staged_version
from tokenrec.training.device import torch_threads

log = logging.getLogger(__name__)

PART_FILE = "part-00000.parquet"


def run(cfg: Config, ds: str, run_dir: Path | None) -> dict[str, Any]:
    """Recommend for every user with at least one interaction in the snapshot of ``ds`` and stage the output.

    Args:
        cfg: the resolved configuration (``inference``, ``llm`` batching/precision, ``train.device``).
        ds: the logical date: input ``interactions/snapshot_date=ds``, output ``recommendations/dt=ds``.
        run_dir: unused (the model comes from the registry); kept for the common task signature.

    Returns:
        The staged version folder and the manifest's counts, model and durations.

    Raises:
        InputError: the snapshot is not published, or the ID maps disagree with the model's.
        tokenrec.mlops.registry.RegistryError: no version holds the alias (no champion yet).
        tokenrec.mlops.packaging.ModelIntegrityError: the model's tokenizer differs from its registered hash.
    """
    del run_dir
    started = time.perf_counter()
    lake = schema.Lake.at(cfg.paths.lake)
    snapshot, partition = lake.interactions(ds), lake.recommendations(ds)
    if not is_published(snapshot):
        raise InputError(
            snapshot, "no published interactions snapshot", f"Run `tokenrec etl --ds {ds}` and `tokenrec validate-interactions --ds {ds}` first."
        )
    target, source = choose_model(cfg, partition)
    log.info("batch inference for %s with %s version %d (%s)", ds, target.name, target.version, source)

    model = packaging.load_version(target).configure(cfg)
    loaded = time.perf_counter()
    data = InteractionData.load(snapshot)
    user_ids = current_ids(lake, schema.USERS, data.n_users, model.user_ids)
    item_ids = current_ids(lake, schema.ITEMS, data.n_items, model.item_ids)
    tables = fold_in_bundle(model.scorer, model.bundle, data)
    index_items = len(model.scorer.index) + len(tables.new_items)
    prepared = time.perf_counter()
    generated_at = dt.datetime.combine(schema.parse_ds(ds), dt.time(), tzinfo=dt.UTC)
    meta = OutputMeta(target.name, str(target.version), generated_at)
    engine = cfg.inference.engine
    counts: dict[str, Any] = {}

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        if engine == "spark":
            from tokenrec.serving.spark_engine import SparkInference

            job = SparkInference(target, model.tokenizer_hash, cfg, meta)
            counts.update(job.write(folder, tables, data, user_ids, item_ids))
        else:
            recommender = Recommender.folded(model.scorer, tables)
            settings = cfg.inference
            with torch_threads(settings.torch_threads):
                written = write_recommendations(
                    recommender,
                    data,
                    user_ids,
                    item_ids,
                    folder / PART_FILE,
                    settings.topk,
                    settings.user_batch_size,
                    meta,
                    cfg.train.progress,
                )
            counts.update(written)

    def manifest(folder: Path) -> dict[str, Any]:
        return {
            "table": schema.RECOMMENDATIONS_TABLE,
            "dt": ds,
            **counts,
            "engine": engine,
            "k": cfg.inference.topk,
            "index_items": index_items,
            "model_name": target.name,
            "model_version": str(target.version),
            "model_run_id": target.run_id,
            "model_source": source,
            "tokenizer_hash": model.tokenizer_hash,
            "input_snapshot": str(snapshot),
            "input_snapshot_version": current_version(snapshot).name,
            "generated_at": generated_at.isoformat(),
            "config_hash": cfg.hash(),
            "fold_in": tables.stats,
            "durations_s": {
                "load_model": round(loaded - started, 3),
                "prepare": round(prepared - loaded, 3),
                "recommend_and_write": round(time.perf_counter() - prepared, 3),
            },
        }

    version = stage_partition(partition, write, manifest)
    summary = {"staged": str(version), **read_json(version / schema.MANIFEST_FILE)}
    log.info("staged %s: %d rows for %d users (%s engine)", version, counts["rows"], counts["users"], engine)
    return summary


def choose_model(cfg: Config, partition: Path) -> tuple[registry.AliasTarget, str]:
    """The model version for this date, resolved once, and where it came from (``recorded`` or ``alias ...``).

    A staged output wins over the published one: it is the most recent attempt for the date.
    """
    if cfg.inference.rerun_model == "recorded":
        for folder in (staged_version(partition), current_version(partition)):
            manifest_path = folder / schema.MANIFEST_FILE if folder else None
            if manifest_path is not None and manifest_path.is_file():
                recorded = read_json(manifest_path)
                target = packaging.resolve_version(
                    cfg, recorded["model_name"], int(recorded["model_version"])
                )
                return target, f"recorded in {folder.name}"
    return registry.resolve_alias(cfg, cfg.inference.model_alias), f"alias {cfg.inference.model_alias}"

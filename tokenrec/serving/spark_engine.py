"""Batch inference spread over Spark executors: user batches -> ``mapInPandas`` -> one Parquet file per task.

TokenRec (Qu et al., arXiv 2406.10450) serves every user with one forward pass and one cosine search, so users
are independent and the nightly run scales out by splitting them. Scope: the ``spark`` engine of the
``batch_inference`` task (``inference.engine: spark``); the model, the fold-in and the publish path are the
local engine's (:mod:`tokenrec.serving.recommender`, :mod:`tokenrec.tasks.batch_inference`).

Same rows as the local engine, by construction:

- the driver resolves the model version and folds in new users and items once; the item side (token table,
  new index vectors, raw item ids) goes to the executors as one broadcast, the user side (raw id, ID tokens,
  time-ordered history) as the rows of a scratch Parquet input inside the version folder being written;
- users are cut into the local engine's batches (:func:`tokenrec.serving.recommender.user_batches`); the input is
  range-partitioned on the batch number and sorted inside each partition, so a batch never spans two tasks
  and every forward pass and search sees exactly the users it sees in the local engine;
- each task writes its batches in order with the local engine's writer to ``part-<first batch>.parquet``
  (temporary name, then an atomic rename, so a retried task leaves one whole file); the files in name order
  hold the local engine's rows in its order.

Each Python worker loads the model once: a module-level cache keeps the loaded model with its folded-in index,
keyed by tracking URI, model name and version, tokenizer hash and the digest of the shipped tables, and Spark
reuses Python workers across tasks (``spark.python.worker.reuse``, on by default). Torch and faiss in a worker
use ``inference.torch_threads`` threads, by default ``spark.task.cpus``, so concurrent tasks do not
oversubscribe the cores. The scores are bit-identical to the local engine's when both use the same thread
count (a matrix product splits its rows over threads differently for different counts; the last bit of a
score may then differ). A worker checks the tokenizer hash of what it loaded against the driver's
(RELIABILITY.md R11).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import PublishError
from tokenrec.mlops import registry
from tokenrec.serving.recommender import (
    CsrSequences,
    FoldedTables,
    OutputMeta,
    Recommender,
    recommendation_table,
    user_batches,
)
from tokenrec.storage import atomic_open
from tokenrec.training.device import set_threads

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

INPUT_DIR = "_input"  # scratch user rows inside the version folder; removed before the manifest is written
INPUT_FILE = "users.parquet"  # read by its own name: Spark skips paths whose last part starts with "_"
BATCH, USER_IDX, CODES, HISTORY = "batch", "user_idx", "codes", "history"
TASK_SUMMARY = (
    "file string, batches long, rows long, users long, pid long, model_loads long, peak_rss_mb double"
)

# worker side: the recommender this Python worker loaded, by cache key (at most one entry)
_LOADED: dict[tuple[Any, ...], Recommender] = {}


@dataclasses.dataclass(frozen=True)
class Shipped:
    """The item side every task needs, broadcast once: fold-in tables without users, raw item ids."""

    tables: FoldedTables
    item_ids: pa.Array
    digest: str


@dataclasses.dataclass(frozen=True)
class SparkInference:
    """One run of the Spark engine: which model, with which settings, labelled how.

    Args:
        target: the model version resolved once by the driver (R7); workers load exactly this version.
        tokenizer_hash: the hash of the tokenizer the driver loaded; a worker refuses any other (R11).
        cfg: the resolved configuration (``inference``, ``llm`` batching and precision, ``train.device``,
            ``spark``, ``mlflow``).
        meta: model name, version and logical date written into every row.
    """

    target: registry.AliasTarget
    tokenizer_hash: str
    cfg: Config
    meta: OutputMeta

    def write(
        self,
        folder: Path,
        tables: FoldedTables,
        data: InteractionData,
        user_ids: pa.Array,
        item_ids: pa.Array,
        spark: SparkSession | None = None,
    ) -> dict[str, Any]:
        """Recommend for every active user of ``data`` into ``folder`` (an existing, empty version folder).

        Args:
            tables: the fold-in tables computed by the driver (user tokens by index and the item side).
            user_ids, item_ids: raw ids by index.
            spark: the session to use; default :func:`tokenrec.data.spark.get_spark` of ``cfg.spark``.

        Returns:
            ``rows``, ``users`` (with at least one row), ``active_users`` and ``spark`` (tasks, files,
            Python workers, model loads, the workers' peak RSS).
        """
        if spark is None:
            from tokenrec.data.spark import get_spark

            spark = get_spark(self.cfg.spark)
        scratch = folder / INPUT_DIR
        item_side = tables.item_side()
        shipped = spark.sparkContext.broadcast(Shipped(item_side, item_ids, item_side.item_digest()))
        runtime = dataclasses.replace(
            self.cfg,
            train=dataclasses.replace(self.cfg.train, progress=False),
            mlflow=dataclasses.replace(self.cfg.mlflow, tracking_uri=registry.tracking_uri(self.cfg)),
        )  # workers reach the registry the driver resolved, whatever their environment says
        worker = _Worker(self.target, self.tokenizer_hash, runtime, self.meta, str(folder), shipped)
        partitions, summary = 0, []
        try:
            n_batches, active = self._write_input(scratch, tables, data, user_ids)
            if n_batches:
                partitions = min(
                    n_batches, self.cfg.inference.spark_partitions or spark.sparkContext.defaultParallelism
                )
                users = (
                    spark.read.parquet(str(scratch / INPUT_FILE))
                    .repartitionByRange(partitions, BATCH)
                    .sortWithinPartitions(BATCH, USER_IDX)
                )
                summary = users.mapInPandas(worker, TASK_SUMMARY).collect()
        finally:
            shipped.destroy()
            shutil.rmtree(scratch, ignore_errors=True)
        tasks = [row.asDict() for row in sorted(summary, key=lambda r: r.file)]
        found = sorted(p.name for p in folder.glob("part-*.parquet"))
        if found != [t["file"] for t in tasks]:
            raise PublishError(
                f"Spark tasks reported the files {[t['file'] for t in tasks]} but {folder} holds {found}; "
                "nothing was published, rerun batch_inference"
            )
        rows, users_with_rows = sum(t["rows"] for t in tasks), sum(t["users"] for t in tasks)
        stats = {
            "partitions": partitions,
            "batches": n_batches,
            "files": len(tasks),
            "python_workers": len({t["pid"] for t in tasks}),
            "model_loads": sum(t["model_loads"] for t in tasks),
            "worker_peak_rss_mb": max((t["peak_rss_mb"] for t in tasks), default=0.0),
        }
        log.info("spark engine: %d rows for %d of %d active users: %s", rows, users_with_rows, active, stats)
        return {"rows": rows, "users": users_with_rows, "active_users": active, "spark": stats}

    def _write_input(
        self, scratch: Path, tables: FoldedTables, data: InteractionData, user_ids: pa.Array
    ) -> tuple[int, int]:
        """One row per active user, batch by batch: ``batch, user_idx, user_id, codes, history``.

        Returns:
            The number of batches and of active users.
        """
        scratch.mkdir(parents=True)
        sequences = CsrSequences.of(data)
        active = np.flatnonzero(sequences.lengths() > 0)
        n_batches = 0
        with pq.ParquetWriter(scratch / INPUT_FILE, _input_schema()) as writer:
            for number, users in user_batches(active, self.cfg.inference.user_batch_size):
                writer.write_table(_input_rows(number, users, tables.user_codes, sequences, user_ids))
                n_batches += 1
        return n_batches, len(active)


def _input_rows(
    number: int, users: np.ndarray, user_codes: np.ndarray, sequences: CsrSequences, user_ids: pa.Array
) -> pa.Table:
    """The input rows of batch ``number``: its active ``users`` (ascending) with tokens and histories."""
    width = user_codes.shape[1]
    # users between two active ones have no items: the batch's histories are one slice of the CSR items
    lo, hi = sequences.indptr[users[0]], sequences.indptr[users[-1] + 1]
    offsets = (np.append(sequences.indptr[users], hi) - lo).astype(np.int32)  # (U + 1,)
    codes = user_codes[users].astype(np.int64).ravel()  # (U * K',)
    code_offsets = (np.arange(len(users) + 1) * width).astype(np.int32)  # (U + 1,)
    return pa.table(
        {
            BATCH: pa.array(np.full(len(users), number, dtype=np.int64)),
            USER_IDX: pa.array(users.astype(np.int64)),
            schema.USER_ID: user_ids.take(pa.array(users, pa.int64())).cast(pa.string()),
            CODES: pa.ListArray.from_arrays(pa.array(code_offsets), pa.array(codes)),
            HISTORY: pa.ListArray.from_arrays(pa.array(offsets), pa.array(sequences.items[lo:hi])),
        },
        schema=_input_schema(),
    )


def _input_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(BATCH, pa.int64()),
            pa.field(USER_IDX, pa.int64()),
            pa.field(schema.USER_ID, pa.string()),
            pa.field(CODES, pa.list_(pa.int64())),
            pa.field(HISTORY, pa.list_(pa.int64())),
        ]
    )


@dataclasses.dataclass(frozen=True)
class _Worker:
    """What each task runs (pickled to the executors): its batches -> one Parquet file -> one summary row."""

    target: registry.AliasTarget
    tokenizer_hash: str
    cfg: Config
    meta: OutputMeta
    folder: str
    shipped: Any  # pyspark Broadcast[Shipped]

    def __call__(self, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        shipped: Shipped = self.shipped.value
        writer: pq.ParquetWriter | None = None
        final = None
        batches = rows = users = loads = 0
        # the file is renamed into place only when every batch is written (storage.atomic_open)
        with contextlib.ExitStack() as stack:
            for batch in _whole_batches(frames):
                recommender, loaded = self._recommender(shipped)
                loads += loaded
                codes = np.stack(batch[CODES].to_numpy()).astype(np.int64)  # (U, K')
                histories = [np.asarray(h, dtype=np.int64) for h in batch[HISTORY]]
                scores, items = recommender.recommend_histories(codes, histories, self.cfg.inference.topk)
                user_ids = pa.array(batch[schema.USER_ID].to_numpy(), pa.string())
                table = recommendation_table(
                    np.arange(len(batch)), scores, items, user_ids, shipped.item_ids, self.meta
                )
                if writer is None:  # a retried task rewrites the same name
                    final = Path(self.folder) / f"part-{int(batch[BATCH].iat[0]):06d}.parquet"
                    writer = pq.ParquetWriter(stack.enter_context(atomic_open(final)), schema.RECOMMENDATIONS)
                    stack.callback(writer.close)  # before the file is renamed (last in, first out)
                writer.write_table(table)
                batches += 1
                rows += table.num_rows
                users += int((items[:, 0] >= 0).sum())
        if writer is None:
            return  # an empty partition writes nothing
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        yield pd.DataFrame(
            {"file": [final.name], "batches": [batches], "rows": [rows], "users": [users],
             "pid": [os.getpid()], "model_loads": [loads], "peak_rss_mb": [peak_mb]}
        )  # fmt: skip

    def _recommender(self, shipped: Shipped) -> tuple[Recommender, bool]:
        """This worker's recommender, loaded on first use (True) or from the cache (False)."""
        key = (self.cfg.mlflow.tracking_uri, self.target.name, self.target.version, self.tokenizer_hash,
               shipped.digest)  # fmt: skip
        if key in _LOADED:
            return _LOADED[key], False
        _LOADED.clear()  # one model per worker: a new version replaces the old one
        _limit_threads(self.cfg.inference.torch_threads)
        import mlflow

        from tokenrec.mlops import packaging

        mlflow.set_tracking_uri(self.cfg.mlflow.tracking_uri)
        mlflow.set_registry_uri(self.cfg.mlflow.tracking_uri)
        model = packaging.load_version(self.target).configure(self.cfg)
        if model.tokenizer_hash != self.tokenizer_hash:
            raise packaging.ModelIntegrityError(
                f"{self.target.name} version {self.target.version} loaded on an executor has tokenizer hash "
                f"{model.tokenizer_hash[:12]}..., the driver's has {self.tokenizer_hash[:12]}...; "
                "refusing to mix them. Re-register the run."
            )
        if shipped.tables.item_digest() != shipped.digest:
            raise RuntimeError("the broadcast fold-in tables differ from the driver's (digest mismatch)")
        _LOADED[key] = Recommender.folded(model.scorer, shipped.tables)
        log.info("worker %d loaded %s version %s", os.getpid(), self.target.name, self.target.version)
        return _LOADED[key], True


def _limit_threads(count: int) -> None:
    """Torch and faiss use ``count`` threads; 0: this task's share of the cores (``spark.task.cpus``)."""
    from pyspark import TaskContext

    if count <= 0:
        context = TaskContext.get()
        count = context.cpus() if context is not None else 1
    set_threads(max(1, count))


def _whole_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Regroup Spark's Arrow chunks (sorted by batch) into whole batches, in order."""
    pending: list[pd.DataFrame] = []
    for frame in frames:
        if frame.empty:
            continue
        numbers = frame[BATCH].to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(numbers)) + 1).tolist(), len(frame)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            piece = frame.iloc[lo:hi]
            if pending and pending[-1][BATCH].iat[0] != piece[BATCH].iat[0]:
                yield pd.concat(pending, ignore_index=True)
                pending = []
            pending.append(piece)
    if pending:
        yield pd.concat(pending, ignore_index=True)

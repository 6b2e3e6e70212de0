"""The run folder of a retrain: the one place that names its folders and files.

A retrain writes what it trains into one folder, ``<paths.runs>/<run id>`` (run id ``<dataset>-<ds>`` unless
``--run-id`` names another), one sub-folder per training stage. The later stages, ``register``
(:mod:`tokenrec.mlops.packaging` bundles a part of it into the MLflow model), the nightly report, MLflow
tracking and the benchmarks read it. Every name below is a property or method of :class:`RunFolder` (or, for
the files every stage folder holds, a constant of this module); no other module spells one::

    <run id>/
      gnn/                              train-gnn
        embeddings.safetensors          float32 (n, d) tables: user_ego, item_ego (layer 0), user, item
                                        (propagated, the mean of the layer outputs)
        metrics.json                    valid/test HR/NDCG@K of the propagated and (``ego``) layer-0 tables
        history.json                    one record per epoch
        seed-<s>/                       with gnn.seeds > 1: each seed's history.json and checkpoints/
      tokenizer/                        train-tokenizer
        user_tokenizer.safetensors      weights of the user tokenizer, likewise item_tokenizer.safetensors
        tokens.safetensors              int64 user_codes (n_users, K) and item_codes (n_items, K)
        stats.json                      per entity: codebook usage and perplexity per level, collisions
        history.json                    per entity: one record per epoch
        user_codebook_usage.png         rank-frequency of the codes, likewise item_codebook_usage.png
        tokenizer.json                  written last: what rebuilds the tokenizers, the SHA-256 of every file
                                        above and the tokenizer_hash a model built on them records
        checkpoints/user/, .../item/    one checkpoint folder per entity
      llm/                              train-llm
        backbone/                       the fine-tuned backbone (save_pretrained) with its text tokenizer
        projection.safetensors          the projection MLP
        metrics.json, history.json      valid/test metrics per llm.report_variants; one record per epoch
        training_curve.png
        llm.json                        written last: what rebuilds the model and its prompts
      eval/                             evaluate
        metrics.json                    every model of eval.baselines, and the champion on the same split
        <model>/                        a baseline trained there (mf, sasrec, ...): history.json, checkpoints/

Every stage folder also holds ``config.yaml`` (the resolved config) and ``checkpoints/`` (what a rerun after a
kill resumes from; not logged to MLflow, ``mlflow.artifact_exclude``). A stage's manifest (``tokenizer.json``,
``llm.json``) is written last, so its presence means a complete output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GNN, TOKENIZER, LLM, EVAL = "gnn", "tokenizer", "llm", "eval"
STAGES = (GNN, TOKENIZER, LLM, EVAL)  # one folder per training stage, in pipeline order
PACKAGED_STAGES = (GNN, TOKENIZER, LLM)  # the folders the registered model bundles (RunFolder.packaged)
ENTITIES = ("user", "item")
GNN_TABLES = ("user_ego", "item_ego", "user", "item")  # the tensors of gnn/embeddings.safetensors

# files and folders that any stage folder (or a sub-folder a trainer writes into) may hold
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
STATS_FILE = "stats.json"
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class RunFolder:
    """The folders and files of the run folder ``root`` (see the module docstring for the whole layout).

    Args:
        root: the run folder; its name is the retrain id.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def at(cls, runs: str | os.PathLike[str], run_id: str) -> RunFolder:
        """The run folder of ``run_id`` under ``runs`` (``paths.runs``)."""
        return cls(Path(runs) / run_id)

    @property
    def run_id(self) -> str:
        return self.root.name

    def stage(self, name: str) -> Path:
        """The folder of stage ``name`` (one of :data:`STAGES`)."""
        if name not in STAGES:
            raise ValueError(f"run folder stage must be one of {', '.join(STAGES)}, got {name!r}")
        return self.root / name

    def metrics(self, stage: str) -> Path:
        return self.stage(stage) / METRICS_FILE

    def history(self, stage: str) -> Path:
        return self.stage(stage) / HISTORY_FILE

    # ---------------------------------------------------------------------------------------------- gnn/

    @property
    def gnn(self) -> Path:
        return self.stage(GNN)

    @property
    def embeddings(self) -> Path:
        """``gnn/embeddings.safetensors``."""
        return self.gnn / "embeddings.safetensors"

    def gnn_seed(self, seed: int) -> Path:
        """Where seed ``seed`` trains when ``gnn.seeds`` > 1."""
        return self.gnn / f"seed-{seed}"

    # ---------------------------------------------------------------------------------------- tokenizer/

    @property
    def tokenizer(self) -> Path:
        return self.stage(TOKENIZER)

    @property
    def tokenizer_manifest(self) -> Path:
        """``tokenizer/tokenizer.json``, written last."""
        return self.tokenizer / "tokenizer.json"

    @property
    def tokens(self) -> Path:
        """``tokenizer/tokens.safetensors``, the token table."""
        return self.tokenizer / "tokens.safetensors"

    @property
    def tokenizer_stats(self) -> Path:
        return self.tokenizer / STATS_FILE

    def tokenizer_weights(self, entity: str) -> Path:
        """``tokenizer/<entity>_tokenizer.safetensors``."""
        return self.tokenizer / f"{entity}_tokenizer.safetensors"

    def codebook_usage_plot(self, entity: str) -> Path:
        return self.tokenizer / f"{entity}_codebook_usage.png"

    def tokenizer_checkpoints(self, entity: str) -> Path:
        return self.tokenizer / CHECKPOINTS_DIR / entity

    # ---------------------------------------------------------------------------------------------- llm/

    @property
    def llm(self) -> Path:
        return self.stage(LLM)

    @property
    def llm_manifest(self) -> Path:
        """``llm/llm.json``, written last."""
        return self.llm / "llm.json"

    @property
    def backbone(self) -> Path:
        """``llm/backbone/``, the fine-tuned backbone folder."""
        return self.llm / "backbone"

    @property
    def projection(self) -> Path:
        return self.llm / "projection.safetensors"

    @property
    def training_curve(self) -> Path:
        return self.llm / "training_curve.png"

    # --------------------------------------------------------------------------------------------- eval/

    @property
    def eval(self) -> Path:
        return self.stage(EVAL)

    @property
    def eval_metrics(self) -> Path:
        """``eval/metrics.json``: the numbers ``register`` tags and ``promote`` gates on."""
        return self.metrics(EVAL)

    def baseline(self, name: str) -> Path:
        """``eval/<name>/``: where ``evaluate`` trains baseline ``name``."""
        return self.eval / name

    # ------------------------------------------------------------------------------------- the model

    def packaged(self) -> list[Path]:
        """The files and folders the registered model bundles, in :data:`PACKAGED_STAGES` order."""
        return [
            self.embeddings,
            *(self.tokenizer_weights(entity) for entity in ENTITIES),
            self.tokens,
            self.tokenizer_manifest,
            self.llm_manifest,
            self.projection,
            self.backbone,
        ]


def gnn_table(entity: str, output: str = "propagated") -> str:
    """The tensor of ``gnn/embeddings.safetensors`` holding ``entity``'s table for ``gnn.output`` ``output``."""
    return f"{entity}_ego" if output == "ego" else entity

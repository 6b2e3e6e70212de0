"""Typed, layered configuration.

Precedence, lowest to highest: the dataclass defaults below < a YAML file (``--config file.yaml``) <
command-line overrides (``--set etl.kcore=10``). Unknown keys are an error that lists the valid names, values
are coerced to the declared type or rejected, and every section validates itself on construction. The resolved
config is written next to every output (:func:`save_config`) and its hash goes into every manifest.

Defaults work offline on a single machine: everything lives under ``$TOKENREC_HOME`` (``./var`` by default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenrec.errors import ConfigError
from tokenrec.run_folder import CONFIG_FILE
from tokenrec.storage import atomic_write_bytes

_EXPONENT_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")  # 2e-4, 1E3: numbers YAML 1.1 leaves as text


def _home() -> str:
    return os.environ.get("TOKENREC_HOME", "var")


@dataclass
class PathsConfig:
    """Where things live. Empty values are derived from ``home``."""

    home: str = field(default_factory=_home)  # root of all local state ($TOKENREC_HOME, default ./var)
    lake: str = ""  # data lake root (interactions/, id_maps/, quarantine/, recommendations/); default <home>/lake
    runs: str = ""  # training run folders; default <home>/runs

    def __post_init__(self) -> None:
        self.lake = self.lake or str(Path(self.home) / "lake")
        self.runs = self.runs or str(Path(self.home) / "runs")


SOURCE_FORMATS = ("movielens_inter", "movielens_dat", "user_sequence", "csv", "jsonl", "parquet")
TIME_UNITS = ("s", "ms", "us", "iso")


@dataclass
class SourceConfig:
    """The raw interaction log read by the ETL.

    ``path`` is a file, a folder of files, or a folder of ``dt=YYYY-MM-DD`` landing partitions (then every
    partition up to the logical date is read). Empty means the data set's embedded or shared default
    (see :mod:`tokenrec.data.datasets`).
    """

    dataset: str = "ml100k"  # name used in outputs and benchmark files (ml100k, lastfm, beauty, or your own)
    format: str = "movielens_inter"  # one of SOURCE_FORMATS
    path: str = ""  # raw file or folder; empty = the data set's default location
    user_col: str = "user_id"  # csv/jsonl/parquet: column holding the raw user id
    item_col: str = "item_id"  # csv/jsonl/parquet: column holding the raw item id
    time_col: str = "timestamp"  # csv/jsonl/parquet: column holding the event time
    rating_col: str = ""  # csv/jsonl/parquet: optional rating column ("" = none)
    time_unit: str = "s"  # numeric epoch unit (s, ms, us) or "iso" for ISO-8601 strings
    delimiter: str = ","  # csv only
    header: bool = True  # csv only: the first line of each file names the columns

    def __post_init__(self) -> None:
        _one_of("source.format", self.format, SOURCE_FORMATS)
        _one_of("source.time_unit", self.time_unit, TIME_UNITS)
        if len(self.delimiter) != 1:
            raise ConfigError(f"source.delimiter must be one character, got {self.delimiter!r}")


SPLIT_MODES = ("leave_one_out", "global_time")


@dataclass
class EtlConfig:
    """Cleaning, filtering and splitting of the event log into an interactions snapshot."""

    rating_threshold: float | None = None  # keep events with rating >= this (None keeps all)
    kcore: int = 5  # iterative k-core: every user and item keeps >= kcore interactions (<= 1 disables)
    kcore_max_iterations: int = 100  # safety bound on k-core rounds; exceeding it is an error
    max_quarantine_share: float = 0.1  # fail (publish nothing) when more raw records than this are malformed
    split: str = "leave_one_out"  # leave_one_out (last=test, second-to-last=valid) or global_time
    valid_quantile: float = 0.8  # global_time: events at or after this time quantile are validation
    test_quantile: float = 0.9  # global_time: events at or after this time quantile are test
    id_map_lock_timeout_s: float = 1800.0  # wait this long for another ETL's lock on id_maps/, then fail

    def __post_init__(self) -> None:
        _one_of("etl.split", self.split, SPLIT_MODES)
        if self.kcore < 0:
            raise ConfigError(f"etl.kcore must be >= 0, got {self.kcore}")
        if not 0.0 < self.valid_quantile < self.test_quantile < 1.0:
            raise ConfigError(
                "etl.valid_quantile < etl.test_quantile must both lie in (0, 1), "
                f"got {self.valid_quantile} and {self.test_quantile}"
            )


@dataclass
class SparkConfig:
    """How the ETL reaches Spark. Local mode by default; a cluster URL (yarn, k8s://...) in production."""

    master: str = "local[*]"  # spark.master
    app_name: str = "tokenrec"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8  # small data wants few partitions; raise on a cluster
    class_data_sharing: bool = True  # local masters: keep a class-data-sharing archive of the driver JVM's
    # classes (~190 MB, in $XDG_CACHE_HOME/tokenrec/jvm or ~/.cache/tokenrec/jvm), written once by the first
    # job, read by the next ones: a Spark job process starts about 6 s sooner on 2 cores. Off: every JVM loads
    # its classes anew.
    conf: dict[str, str] = field(default_factory=dict)  # any other spark.* settings


@dataclass
class ValidationConfig:
    """Great Expectations gate on the interactions snapshot."""

    min_rows: int = 1  # fail when the snapshot has fewer rows
    max_row_change: float = 0.5  # fail when rows differ from the previous snapshot by more than this ratio
    min_event_ts: str = "1970-01-01"  # events before this are out of range
    sample_rows: int = 5  # offending rows quoted in an error message


@dataclass
class TrainConfig:
    """Settings shared by every training stage."""

    device: str = "auto"  # auto (cuda when present, else cpu), cpu, cuda, cuda:N
    seed: int = 2024
    checkpoint_every: int = 1  # epochs between checkpoints
    progress: bool = True  # tqdm progress bars on long loops


@dataclass
class GnnConfig:
    """LightGCN (PAPER.md section 2, step 0)."""

    dim: int = 64  # embedding size d
    layers: int = 3
    lr: float = 1e-3
    l2: float = 1e-4  # L2 on the ego embeddings of the batch
    batch_size: int = 2048
    max_epochs: int = 1000  # LightGCN at lr 1e-3 needs hundreds of epochs (LastFM peaks after ~400)
    patience: int = 100  # epochs without a better validation NDCG@20 before stopping (noisy on small data)
    eval_every: int = 5  # epochs between validation evaluations
    output: str = "propagated"  # which embeddings later stages use: propagated (mean of layers) or ego
    init_std: float = 0.1  # std of the normal initialisation of the ego tables
    eval_batch_size: int = 2048  # users scored at once in the validation evaluations during training
    threads: int = 0  # CPU threads for the sparse graph products (0 = all cores); ignored on a GPU
    refresh_every: int = 1  # 1 = exact; k > 1: approximate, layers 2..L cached for k batches (models/lightgcn.py)
    seeds: int = 1  # independent trainings (seeds train.seed, train.seed + 1, ...); the one with the best
    # validation NDCG@20 is kept: model selection on validation, never on test
    sampling: str = "user"  # BPR triples per epoch: user = as many triples as training edges, the user drawn
    # uniformly, then one of its items (the LightGCN authors' sampler; better on validation on LastFM and
    # MovieLens-100K, docs/benchmarks/sweep-lightgcn-sampling-*.json); edge = every training edge once

    def __post_init__(self) -> None:
        _one_of("gnn.output", self.output, GNN_OUTPUTS)
        _check_bpr_section("gnn", self)
        if self.layers < 0 or self.refresh_every < 1 or self.seeds < 1:
            raise ConfigError(
                "gnn.layers must be >= 0, gnn.refresh_every and gnn.seeds >= 1, got "
                f"{self.layers}, {self.refresh_every}, {self.seeds}"
            )


GNN_OUTPUTS = ("propagated", "ego")


@dataclass
class MfConfig:
    """BPR matrix factorisation baseline (trained by the same BPR loop as LightGCN)."""

    dim: int = 64  # embedding size
    lr: float = 1e-3  # Adam learning rate
    l2: float = 1e-4  # L2 on the ego embeddings of the batch
    batch_size: int = 2048  # (user, positive, negative) triples per step
    max_epochs: int = 300
    patience: int = 20  # epochs without a better validation NDCG@20 before stopping
    eval_every: int = 5  # epochs between validation evaluations
    init_std: float = 0.1  # std of the normal initialisation
    eval_batch_size: int = 2048  # users scored at once in validation evaluations
    sampling: str = "edge"  # edge or user, as gnn.sampling

    def __post_init__(self) -> None:
        _check_bpr_section("mf", self)


@dataclass
class SasRecConfig:
    """SASRec baseline (Kang & McAuley, ICDM 2018): a causal transformer over the recent item sequence."""

    dim: int = 64  # hidden size (item and position embeddings)
    layers: int = 2  # transformer blocks
    heads: int = 2  # attention heads per block
    max_len: int = 50  # most recent items the model reads
    dropout: float = 0.2  # dropout on embeddings, attention and feed-forward
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 128  # user sequences per step
    max_epochs: int = 200
    patience: int = 20  # epochs without a better validation NDCG@20 before stopping
    eval_every: int = 1  # epochs between validation evaluations
    eval_batch_size: int = 1024  # users scored at once in validation evaluations
    threads: int = 1  # torch CPU threads while training (0 = leave as is); 1 is fastest for this small model
    loss: str = "softmax"  # softmax: cross-entropy over every item, the user's other training items left out
    # (the same full-catalogue loss as llm.loss=softmax, so TokenRec is compared with an equally strong
    # baseline); bce: the SASRec paper's binary cross-entropy on one uniform negative per position
    # (evaluated as the model sasrec_bce)

    def __post_init__(self) -> None:
        _one_of("sasrec.loss", self.loss, SASREC_LOSSES)
        if self.dim % self.heads:
            raise ConfigError(f"sasrec.dim ({self.dim}) must be a multiple of sasrec.heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"sasrec.dropout must lie in [0, 1), got {self.dropout}")
        for name in ("layers", "heads", "max_len", "batch_size", "max_epochs", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")


SASREC_LOSSES = ("softmax", "bce")


def _check_bpr_section(section: str, cfg: Any) -> None:
    for name in ("dim", "batch_size", "eval_every", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{section}.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0.0 or cfg.l2 < 0.0 or cfg.init_std <= 0.0:
        raise ConfigError(f"{section}.lr and {section}.init_std must be > 0 and {section}.l2 >= 0")
    if cfg.max_epochs < 0 or cfg.patience < 1:
        raise ConfigError(f"{section}.max_epochs must be >= 0 and {section}.patience >= 1")
    _one_of(f"{section}.sampling", cfg.sampling, BPR_SAMPLINGS)


BPR_SAMPLINGS = ("edge", "user")


TOKENIZER_KINDS = ("mq", "single", "vqvae", "rqvae", "kmeans")


@dataclass
class TokenizerConfig:
    """MQ-Tokenizer (PAPER.md section 2) and its ablations (see :mod:`tokenrec.models.quantizer`).

    One config serves both the user and the item tokenizer. "Without masking" is ``kind: mq`` with
    ``mask_prob: 0``.
    """

    kind: str = "mq"  # mq, single (one encoder + one codebook, K = 1), vqvae, rqvae, kmeans (no training)
    codebooks: int = 3  # K, tokens per entity (ignored by single, which has one)
    codebook_size: int = 256  # L, codewords per codebook; grow with the catalog (e.g. 512 for ~40k items)
    code_dim: int = 64  # d_c, codeword size (kmeans: always the embedding size)
    hidden_dim: int = 128  # hidden width of the encoder and decoder MLPs
    mask_prob: float = 0.2  # rho, per-element input masking in training (mq, single); 0 disables masking
    beta: float = 0.25  # weight of the commitment term
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 512  # entities per gradient step
    epochs: int = 0  # passes over all entities; 0 = as many as `steps` needs (kmeans: unused)
    steps: int = 3000  # gradient-step budget when epochs is 0: small catalogs get more passes, large ones fewer
    kmeans_init: bool = True  # initialise every codebook by k-means on the encoder outputs before training
    kmeans_iters: int = 10  # Lloyd iterations of that k-means and of the kmeans tokenizer (an init needs few)
    reseed_dead: bool = True  # move codewords chosen by no entity in an epoch onto random encoder outputs
    reseed_until: float = 0.8  # ... only during this first fraction of the epochs, so that the last ones settle
    disambiguate: bool = False  # opt-in: append a level numbering entities that share a K-tuple (TIGER-style)
    cpu_threads: int = 1  # intra-op CPU threads while training (0 = torch default); these small MLPs gain nothing

    def __post_init__(self) -> None:
        _one_of("tokenizer.kind", self.kind, TOKENIZER_KINDS)
        for name in ("codebooks", "code_dim", "hidden_dim", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tokenizer.{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ConfigError(f"tokenizer.codebook_size (L) must be >= 2, got {self.codebook_size}")
        if not 0.0 <= self.mask_prob < 1.0:
            raise ConfigError(f"tokenizer.mask_prob (rho) must lie in [0, 1), got {self.mask_prob}")
        if self.beta < 0.0 or self.lr <= 0.0:
            raise ConfigError(f"tokenizer.beta must be >= 0 and tokenizer.lr > 0, got {self.beta} and {self.lr}")
        if self.epochs < 0 or self.kmeans_iters < 0 or self.cpu_threads < 0:
            raise ConfigError(
                "tokenizer.epochs, tokenizer.kmeans_iters and tokenizer.cpu_threads must be >= 0, "
                f"got {self.epochs}, {self.kmeans_iters}, {self.cpu_threads}"
            )
        if not 0.0 <= self.reseed_until <= 1.0:
            raise ConfigError(f"tokenizer.reseed_until must lie in [0, 1], got {self.reseed_until}")


@dataclass
class EvalConfig:
    """Evaluation protocol: full ranking, seen items excluded, selection on validation only."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 30])
    batch_size: int = 1024  # users scored at once
    baselines: list[str] = field(default_factory=lambda: ["mostpop", "mf", "lightgcn", "sasrec"])


BACKBONE_ARCHITECTURES = ("auto", "encoder", "encoder_decoder", "decoder")
POOLINGS = ("auto", "mean", "last", "cls")
TOKEN_INITS = ("mean", "codeword", "random")
HISTORY_STYLES = ("paper", "compact")
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
LLM_PRECISIONS = ("auto", "bf16", "fp32")
LLM_TRAININGS = ("causal", "sampled")
LLM_LOSSES = ("softmax", "sampled_softmax", "hinge")
PROMPT_VARIANTS = ("full", "id_only", "unseen_prompt")  # history prompt, ID-only, held-out template


@dataclass
class LlmConfig:
    """The LLM backbone of LLM4Rec, its ID-token vocabulary and its prompts (PAPER.md section 2).

    Loading, pooling and the vocabulary: :mod:`tokenrec.llm.backbone`; templates: :mod:`tokenrec.llm.prompts`.
    """

    backbone: str = "minilm"  # minilm | smollm2 (offline, from installed packages) | tiny-bert, tiny-llama,
    # tiny-t5 (random weights, for tests and smoke runs) | any Hugging Face name or local folder (t5-small)
    architecture: str = "auto"  # auto (from the model config), encoder, encoder_decoder (T5), decoder
    pooling: str = "auto"  # auto (mean for encoders, last for decoders), mean (non-padding tokens), last, cls
    dtype: str = "float32"  # dtype the weights are loaded in; mixed precision on a GPU comes from autocast
    cache_dir: str = ""  # converted backbones (smollm2 GGUF -> folder); default <paths.home>/cache/backbones
    allow_download: bool = False  # let transformers reach the hub for a name missing from the local cache
    token_init: str = "mean"  # new ID-token embeddings: mean (of the existing ones, plus noise), codeword
    # (tokenizer codewords through a fixed random projection), random (normal, the model's initializer_range)
    token_init_noise: float = 0.1  # mean: noise std relative to the per-dimension std of existing embeddings
    history_len: int = 50  # H: the most recent training items in a history prompt, in time order
    history_style: str = "paper"  # paper ("item_<v1-4><v2-9>, item_...") or compact ("<v1-4><v2-9><v1-...")
    # --- LLM4Rec: projection, loss and training (tokenrec/models/llm4rec.py, tokenrec/training/llm.py)
    proj_hidden: int = 512  # hidden width of the projection MLP: backbone hidden -> proj_hidden -> gnn.dim
    proj_dropout: float = 0.1  # dropout inside the projection MLP while training
    id_only_share: float = 0.2  # sampled training: share of prompts written with the ID-only template (1 = the
    # ID-only ablation, then validation uses ID-only prompts too; 0 = history prompts only). Causal training
    # always trains its position 0, the prompt's prefix before any item (the causal form of an ID-only prompt)
    training: str = "causal"  # causal: one prompt per window of a user's training items, read under a causal
    # mask so that every position is a target (all history prefixes in one pass, as SASRec trains); sampled:
    # the paper's one prompt per (history prefix, next item) sample (tokenrec/training/llm_samples.py)
    loss: str = "softmax"  # softmax: cross-entropy over every item of the temperature-scaled retrieval score,
    # the user's other training items left out; sampled_softmax: the same estimated from num_sampled items
    # with logQ correction (catalogues too large for one matrix); hinge: the paper's 1 - cos plus
    # max(0, cos - margin) on num_negatives sampled (and optionally in-batch) negatives
    temperature: float = 0.1  # softmax losses: tau of score / tau (cosine, or unit z . raw item with
    # retrieval.normalize_items false: the loss ranks by what retrieval ranks by)
    num_sampled: int = 1024  # sampled_softmax: items drawn per micro-batch from the training-target popularity
    window_stride: int = 0  # causal: items between the ends of a user's consecutive windows (0 = history_len
    # + 1: windows do not overlap); a smaller stride gives each target at least history_len + 1 - stride
    # items of context, each target still trained once per epoch
    bucket_batches: int = 16  # micro-batches per length bucket: shuffled prompts are cut into chunks of this
    # many batches and sorted by length inside a chunk, so a batch pads to nearly its own length (1 = off)
    num_negatives: int = 1  # hinge: uniform negatives per target, drawn outside the user's training items
    in_batch_negatives: bool = False  # hinge: also use the other targets of the (per-process) batch as negatives
    margin: float = 0.0  # hinge: gamma of the negative term max(0, cos(z, q_neg) - gamma)
    lr: float = 5e-5  # AdamW learning rate of the backbone's own weights (the paper's)
    head_lr: float = 1e-3  # AdamW learning rate of the projection and the new ID-token embeddings
    weight_decay: float = 0.0  # AdamW decoupled weight decay (all groups)
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps
    batch_size: int = 32  # samples per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum * ranks)
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    precision: str = "auto"  # auto (bf16 autocast on a GPU that supports it, and on a CPU where a bf16 matrix
    # product is measured to be 1.5x as fast as fp32: AMX / AVX512-BF16; else fp32), bf16, fp32
    max_epochs: int = 10
    patience: int = 2  # validations without a better validation NDCG@20 before stopping
    eval_every: int = 1  # epochs between validations (model selection on validation NDCG@20 only)
    samples_per_user: int = 0  # training prompts drawn per user and epoch, re-drawn each epoch (0 = all): a
    # prompt is one prefix sample (sampled) or one window (causal)
    eval_batch_size: int = 128  # prompts per forward pass in validation, evaluation and inference
    checkpoint_steps: int = 0  # also checkpoint every this many optimizer steps inside an epoch (0 = off)
    report_variants: list[str] = field(default_factory=lambda: ["full"])  # prompt variants that train-llm
    # scores on valid and test into llm/metrics.json: full, id_only, unseen_prompt (evaluate scores all)

    def __post_init__(self) -> None:
        _one_of("llm.architecture", self.architecture, BACKBONE_ARCHITECTURES)
        _one_of("llm.training", self.training, LLM_TRAININGS)
        _one_of("llm.loss", self.loss, LLM_LOSSES)
        if self.temperature <= 0.0 or self.num_sampled < 1 or self.window_stride < 0 or self.bucket_batches < 1:
            raise ConfigError(
                "llm.temperature must be > 0, llm.num_sampled and llm.bucket_batches >= 1 and llm.window_stride "
                f">= 0, got {self.temperature}, {self.num_sampled}, {self.bucket_batches}, {self.window_stride}"
            )
        if self.window_stride > self.history_len + 1:
            raise ConfigError(
                f"llm.window_stride ({self.window_stride}) may not exceed llm.history_len + 1 "
                f"({self.history_len + 1}): items between windows would never be targets"
            )
        if self.training == "causal" and self.id_only_share >= 1.0:
            raise ConfigError(
                "llm.id_only_share=1 (the ID-only ablation) trains no history position: use llm.training=sampled"
            )
        _one_of("llm.precision", self.precision, LLM_PRECISIONS)
        for variant in self.report_variants:
            _one_of("llm.report_variants", variant, PROMPT_VARIANTS)
        for name in ("proj_hidden", "batch_size", "grad_accum", "max_epochs", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"llm.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_negatives", "warmup_steps", "samples_per_user", "checkpoint_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"llm.{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_batch_size < 1 or self.lr <= 0.0 or self.head_lr <= 0.0:
            raise ConfigError("llm.eval_batch_size must be >= 1 and llm.lr, llm.head_lr > 0")
        if not 0.0 <= self.id_only_share <= 1.0 or not 0.0 <= self.proj_dropout < 1.0:
            raise ConfigError(
                f"llm.id_only_share must lie in [0, 1] and llm.proj_dropout in [0, 1), got "
                f"{self.id_only_share}, {self.proj_dropout}"
            )
        if self.weight_decay < 0.0 or self.max_grad_norm < 0.0:
            raise ConfigError("llm.weight_decay and llm.max_grad_norm must be >= 0")
        _one_of("llm.pooling", self.pooling, POOLINGS)
        _one_of("llm.token_init", self.token_init, TOKEN_INITS)
        _one_of("llm.history_style", self.history_style, HISTORY_STYLES)
        _one_of("llm.dtype", self.dtype, BACKBONE_DTYPES)
        if not self.backbone:
            raise ConfigError("llm.backbone must name a model: minilm, smollm2, a hub name or a folder")
        if self.history_len < 0 or self.token_init_noise < 0.0:
            raise ConfigError(
                f"llm.history_len and llm.token_init_noise must be >= 0, got {self.history_len}, "
                f"{self.token_init_noise}"
            )


INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class RetrievalConfig:
    """Generative retrieval: cosine top-K over item embeddings in a faiss index (tokenrec/serving/retrieval.py)."""

    index: str = "flat"  # flat (exact, IndexFlatIP), ivf (IndexIVFFlat), hnsw (IndexHNSWFlat): approximate
    # kinds trade recall for speed on large catalogs
    normalize_items: bool = True  # true: cosine (the paper); false: the unit preference vector . the raw GNN
    # item vector, so item norms (a popularity prior LightGCN learns) rank too; the training loss stays cosine
    user_token_weight: float = 0.0  # a: the preference vector is the unit LLM4Rec vector plus a times the unit
    # vector the user tokenizer decodes from the user's own ID tokens (0 = the paper; our addition, measured in
    # docs/benchmarks/probe-tokenrec-scoring-*.json; new users get theirs from their folded-in tokens)
    batch_size: int = 1024  # users per search call
    ivf_nlist: int = 0  # ivf: number of inverted lists; 0 = about 4 * sqrt(n_items), >= 39 items per list
    ivf_nprobe: int = 32  # ivf: lists visited per query (recall against speed)
    hnsw_m: int = 32  # hnsw: neighbours per graph node
    hnsw_ef_construction: int = 200  # hnsw: beam width while building
    hnsw_ef_search: int = 256  # hnsw: beam width while searching (recall against speed)

    def __post_init__(self) -> None:
        _one_of("retrieval.index", self.index, INDEX_KINDS)
        for name in ("batch_size", "ivf_nprobe", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"retrieval.{name} must be >= 1, got {getattr(self, name)}")
        if self.ivf_nlist < 0:
            raise ConfigError(f"retrieval.ivf_nlist must be >= 0 (0 = automatic), got {self.ivf_nlist}")
        if self.user_token_weight < 0.0:
            raise ConfigError(f"retrieval.user_token_weight must be >= 0 (0 = off), got {self.user_token_weight}")


MODEL_VERSION_POLICIES = ("recorded", "alias")
INFERENCE_ENGINES = ("local", "spark")


@dataclass
class InferenceConfig:
    """Nightly batch inference (tokenrec/serving/recommender.py) and its output gate (validate_recommendations)."""

    topk: int = 100  # K, recommendations per user (fewer only for a user with fewer unseen items)
    user_batch_size: int = 512  # users per streamed batch: prompts, forward passes, retrieval, one row group
    # (the Spark engine never splits a batch, so small data sets need several batches to use all executors)
    model_alias: str = "champion"  # registry alias resolved once per run when no version is recorded for the date
    rerun_model: str = "recorded"  # recorded: a rerun of a date that has a staged or published output reuses
    # the model version recorded in its manifest (R7, identical rows); alias: resolve model_alias again
    min_user_coverage: float = 1.0  # gate: users with recommendations / users with >= 1 interaction
    sample_rows: int = 5  # offending rows quoted in a failed gate's message
    engine: str = "local"  # local: this process streams the user batches; spark: the same batches spread over
    # Spark executors with mapInPandas (cluster from spark.master), each Python worker loading the model once
    spark_partitions: int = 0  # spark engine: tasks the user batches are range-partitioned into (0 = Spark's
    # default parallelism); a batch is never split, so the rows do not depend on this
    gate_chunk_rows: int = 1_000_000  # gate: output rows validated per chunk (whole users), bounds its memory
    torch_threads: int = 0  # CPU threads of the forward passes (0 = torch's default in the local engine,
    # spark.task.cpus per Spark task); both engines give bit-identical scores when they use the same count

    def __post_init__(self) -> None:
        _one_of("inference.rerun_model", self.rerun_model, MODEL_VERSION_POLICIES)
        _one_of("inference.engine", self.engine, INFERENCE_ENGINES)
        if self.spark_partitions < 0 or self.torch_threads < 0 or self.gate_chunk_rows < 1:
            raise ConfigError(
                "inference.spark_partitions and inference.torch_threads must be >= 0 and "
                f"inference.gate_chunk_rows >= 1, got {self.spark_partitions}, {self.torch_threads} and "
                f"{self.gate_chunk_rows}"
            )
        if not 1 <= self.topk <= 32767:  # ranks are int16 in the output contract
            raise ConfigError(f"inference.topk must lie in 1..32767, got {self.topk}")
        if self.user_batch_size < 1 or self.sample_rows < 0:
            raise ConfigError(
                f"inference.user_batch_size must be >= 1 and inference.sample_rows >= 0, got "
                f"{self.user_batch_size} and {self.sample_rows}"
            )
        if not 0.0 <= self.min_user_coverage <= 1.0:
            raise ConfigError(f"inference.min_user_coverage must lie in [0, 1], got {self.min_user_coverage}")
        if not self.model_alias:
            raise ConfigError("inference.model_alias must name a registry alias, e.g. champion")


@dataclass
class MlflowConfig:
    """MLflow tracking, the model registry and the promotion gate (:mod:`tokenrec.mlops.registry`).

    Empty locations mean local files under ``paths.home``; a deployment points ``tracking_uri`` at a tracking
    server (or sets ``MLFLOW_TRACKING_URI``) and ``artifact_location`` at an object store.
    """

    enabled: bool = True  # false makes log_stage a no-op (register and promote always use MLflow)
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI if set, else sqlite:///<paths.home>/mlflow/mlflow.db
    artifact_location: str = ""  # new experiment's artifact root; "" = <paths.home>/mlflow/artifacts
    experiment: str = "tokenrec"  # experiment holding one parent run per retrain and one child run per stage
    registered_model: str = "tokenrec"  # registered model name; versions carry the aliases champion/challenger
    gated_model: str = "tokenrec"  # model of eval/metrics.json whose metrics the promotion gate compares
    gated_metrics: list[str] = field(default_factory=lambda: ["valid.NDCG@20", "valid.HR@20"])
    # ^ metrics of gated_model, higher is better, each must clear the margin; never gate on test metrics
    min_abs_improvement: float = 0.0  # required = champion + max(min_abs_improvement, min_rel * |champion|)
    min_rel_improvement: float = 0.0  # relative margin, e.g. 0.01 = challenger must beat champion by 1 %
    artifact_exclude: list[str] = field(default_factory=lambda: ["checkpoints"])  # top-level names of a stage
    # folder not uploaded as artifacts (resume state, not results); [] uploads the whole folder
    score_champion: bool = True  # evaluate also scores models:/<registered_model>@champion on this retrain's
    # split (fold-in of new users/items) for the gate; false leaves the gate without champion numbers

    def __post_init__(self) -> None:
        if not self.experiment or not self.registered_model or not self.gated_model:
            raise ConfigError("mlflow.experiment, mlflow.registered_model and mlflow.gated_model must be set")
        if not self.gated_metrics:
            raise ConfigError("mlflow.gated_metrics must name at least one metric, e.g. valid.NDCG@20")
        if self.min_abs_improvement < 0.0 or self.min_rel_improvement < 0.0:
            raise ConfigError(
                "mlflow.min_abs_improvement and mlflow.min_rel_improvement must be >= 0, got "
                f"{self.min_abs_improvement} and {self.min_rel_improvement}"
            )


@dataclass
class Config:
    """The whole pipeline's configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    etl: EtlConfig = field(default_factory=EtlConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gnn: GnnConfig = field(default_factory=GnnConfig)
    mf: MfConfig = field(default_factory=MfConfig)
    sasrec: SasRecConfig = field(default_factory=SasRecConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short, stable hash of the resolved values (goes into manifests)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# --------------------------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Build the resolved config: defaults < ``base`` (e.g. a data set preset) < YAML ``path`` < ``overrides``.

    Args:
        path: optional YAML file whose nested mapping mirrors :class:`Config`.
        overrides: ``section.key=value`` strings; values are parsed as YAML scalars (``10``, ``true``, ``null``).
        base: an optional nested mapping applied before the file.

    Raises:
        ConfigError: unknown keys (the message lists the valid ones), bad types or invalid values.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if base:
        layers.append(("preset", base))
    if path is not None:
        layers.append((str(path), _read_yaml(Path(path))))
    for item in overrides:
        layers.append((f"--set {item}", _parse_override(item)))

    merged: dict[str, Any] = {}
    for origin, layer in layers:
        _check_keys(Config, layer, origin, prefix="")
        _deep_merge(merged, layer)
    return _build(Config, merged, prefix="")


def config_yaml(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, folder: str | os.PathLike[str], name: str = CONFIG_FILE) -> Path:
    """Write the resolved config as ``name`` into ``folder`` (atomically) and return its path."""
    return atomic_write_bytes(Path(folder) / name, config_yaml(config).encode())


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    parts = _key_path(key.strip())
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _key_path(key: str) -> list[str]:
    """Split ``a.b.c`` along the config tree; below a mapping field (``spark.conf``) the rest is one key."""
    parts = key.split(".")
    cls: Any = Config
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return parts
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return parts  # reported as an unknown key by _check_keys
        cls = hints[part]
        if typing.get_origin(cls) is dict and i + 1 < len(parts):
            return [*parts[: i + 1], ".".join(parts[i + 1 :])]
    return parts


def _deep_merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _check_keys(cls: type, data: dict[str, Any], origin: str, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"unknown config key '{prefix}{key}' in {origin}; valid keys at {where}: {', '.join(names)}"
            )
        sub = hints[key]
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} in {origin} must be a mapping of {', '.join(_field_names(sub))}")
            _check_keys(sub, value, origin, prefix=f"{prefix}{key}.")


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], name)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        if args[1] is str:  # spark.conf: YAML reads `false` and `4` as a bool and an int; Spark wants the text
            value = {k: str(v).lower() if isinstance(v, bool) else v for k, v in value.items()}
        return {str(k): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return type(value)(_coerce(v, args[0], name) for v in value) if origin is list else tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 2e-4 (no dot) as a string; it is plainly a number here
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value

"""Stage ``evaluate``: every model in ``cfg.eval.baselines`` on the same split, one ``metrics.json``.

The protocol is PAPER.md section 5: leave-one-out by time, full ranking over all items, a user's training items
excluded when scoring validation and training + validation items when scoring test, HR@K and NDCG@K for
``cfg.eval.ks``, each model selected on validation only. Output, ``run_dir/eval/metrics.json``::

    {"mostpop": {"valid": {"HR@10": ..., "NDCG@10": ..., ...}, "test": {...}}, "mf": {...}, ...,
     "dataset": "ml100k", "protocol": {...}}

Models come from :data:`REGISTRY`, a mapping name -> builder ``(cfg, data, run_dir) -> ranker`` where a ranker
is a :class:`tokenrec.evaluation.protocol.ScoreRanker` or :class:`tokenrec.evaluation.protocol.TopKRanker`. Built in:
``mostpop``; ``mf``, ``sasrec`` and ``sasrec_bce`` (trained here, checkpoints under ``run_dir/eval/<name>/``;
``sasrec`` with ``sasrec.loss``, ``sasrec_bce`` with the paper's binary cross-entropy); ``lightgcn``
(the propagated embeddings of ``run_dir/gnn``) and ``lightgcn_ego`` (its layer-0 tables). Another module adds
a model with ``@register("tokenrec")`` and lists the name in ``eval.baselines``.

The champion on the same split. With ``mlflow.score_champion`` (default) the version holding the alias
``champion`` is scored too, into the entry ``"champion": {"name", "version", "trained_on", "valid",
"test", "fold_in"}``: loaded by its registry alias through the packaged model (its tokenizer hash checked,
R11) and served as the nightly run serves it (:class:`ChampionRanker`), on this snapshot's validation and
test split with the same exclusions. Users and items it does not know are folded in from the snapshot's
*training* interactions, the ones this retrain trained on, so no validation or test interaction leaks into
either model. ``promote`` compares the new model with these numbers, not with the ones the champion got on
its own, older split (:mod:`tokenrec.mlops.registry`). Without a champion the entry has ``"version": null``; when
it cannot be scored (ID maps that changed, a tokenizer that drifted) it has ``"error"`` and the gate fails.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tokenrec.artifacts import load_embeddings
from tokenrec.config import Config, save_config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import ConfigError, InputError, TokenrecError
from tokenrec.evaluation.protocol import EmbeddingRanker, ScoreRanker, TopKRanker, evaluate_valid_test
from tokenrec.mlops.registry import CHAMPION_ENTRY
from tokenrec.models.mf import MatrixFactorization
from tokenrec.models.mostpop import MostPopular
from tokenrec.run_folder import RunFolder
from tokenrec.storage import atomic_write_json
from tokenrec.training.device import seed_everything
from tokenrec.training.gnn import train_bpr
from tokenrec.training.sasrec import SequenceRanker, build_sasrec, train_sasrec

log = logging.getLogger(__name__)

RankerBuilder = Callable[[Config, InteractionData, Path], ScoreRanker | TopKRanker]
REGISTRY: dict[str, RankerBuilder] = {}


def register(name: str) -> Callable[[RankerBuilder], RankerBuilder]:
    """Decorator adding a ranker builder under ``name`` (a later registration replaces an earlier one)."""

    def add(builder: RankerBuilder) -> RankerBuilder:
        REGISTRY[name] = builder
        return builder

    return add


def protocol(cfg: Config) -> dict[str, Any]:
    """How the numbers were obtained, stored next to them."""
    return {
        "split": cfg.etl.split,
        "ranking": "full (all items)",
        "exclude_valid": "the user's training items",
        "exclude_test": "the user's training and validation items",
        "ties": "higher score first, then lower item index",
        "ks": list(cfg.eval.ks),
        "selection": "validation NDCG@20",
    }


def run(cfg: Config, snapshot: Path, run_dir: Path) -> dict[str, Any]:
    """Build, and where needed train, every model of ``cfg.eval.baselines``; write ``run_dir/eval/metrics.json``.

    Args:
        cfg: the resolved configuration.
        snapshot: the interactions snapshot folder.
        run_dir: the run folder (``gnn/`` is read for ``lightgcn``).

    Returns:
        A summary: the metrics file and each model's test metrics.

    Raises:
        ConfigError: a name in ``eval.baselines`` is not registered.
    """
    unknown = [name for name in cfg.eval.baselines if name not in REGISTRY]
    if unknown:
        raise ConfigError(
            f"eval.baselines names unknown models {unknown}; registered: {', '.join(sorted(REGISTRY))}"
        )
    run = RunFolder(run_dir)
    save_config(cfg, run.eval)
    data = InteractionData.load(snapshot)
    results: dict[str, Any] = {}
    for name in cfg.eval.baselines:
        log.info("evaluate: building %s", name)
        ranker = REGISTRY[name](cfg, data, run.root)
        results[name] = evaluate_valid_test(
            data, ranker, cfg.eval.ks, cfg.eval.batch_size, cfg.train.progress
        )
        log.info("evaluate %s: valid %s, test %s", name, results[name]["valid"], results[name]["test"])
    document = {**results, "dataset": data.name, "protocol": protocol(cfg)}
    if cfg.mlflow.score_champion:
        document[CHAMPION_ENTRY] = score_champion(cfg, data)
    path = atomic_write_json(run.eval_metrics, document)
    summary = {"metrics": str(path), "test": {name: results[name]["test"] for name in results}}
    if cfg.mlflow.score_champion:
        champion = document[CHAMPION_ENTRY]
        summary[CHAMPION_ENTRY] = {k: champion.get(k) for k in ("version", "test", "error") if k in champion}
    return summary


def score_champion(cfg: Config, data: InteractionData) -> dict[str, Any]:
    """The ``champion`` entry of ``metrics.json``: the current champion scored on ``data``'s split.

    Returns ``{"name", "version": None, "note"}`` when there is no champion (no store yet, no alias),
    ``{..., "version", "error"}`` when it cannot be scored, else ``{"name", "version", "trained_on",
    "valid", "test", "fold_in"}``.
    """
    from tokenrec.mlops import registry, tracking

    entry: dict[str, Any] = {"name": cfg.mlflow.registered_model, "version": None}
    if not tracking.store_exists(cfg):
        return {**entry, "note": f"no MLflow store at {tracking.tracking_uri(cfg)} yet"}
    try:
        target = registry.resolve_alias(cfg, registry.CHAMPION)
    except registry.RegistryError:
        return {**entry, "note": f"no version of {entry['name']!r} has the alias {registry.CHAMPION!r}"}
    entry.update(version=target.version, trained_on=target.tags.get("eval_snapshot", ""))
    log.info("evaluate: scoring champion %s version %d on this split", target.name, target.version)
    try:
        ranker = ChampionRanker.load(cfg, target, data)
    except TokenrecError as exc:
        log.warning("evaluate: champion version %d cannot be scored: %s", target.version, exc)
        return {**entry, "error": str(exc)}
    entry.update(evaluate_valid_test(data, ranker, cfg.eval.ks, cfg.eval.batch_size, cfg.train.progress))
    entry["fold_in"] = ranker.fold_in
    log.info("evaluate champion v%d: valid %s, test %s", target.version, entry["valid"], entry["test"])
    return entry


class ChampionRanker:
    """A registered version as a :class:`~tokenrec.evaluation.protocol.TopKRanker`, served as the nightly run does.

    The packaged model with its token tables and item index extended by fold-in
    (:meth:`tokenrec.serving.recommender.Recommender.folded`); the prompt of a user shows the most recent items
    before the split, and those items are excluded, as for every other model.

    Args:
        recommender: the loaded model with the fold-in tables.
        data: the snapshot being evaluated.
        fold_in: fold-in statistics (``new_users``, ``new_items``, ...).
    """

    def __init__(self, recommender: Any, data: InteractionData, fold_in: dict[str, int]) -> None:
        self.recommender = recommender
        self.data = data
        self.fold_in = fold_in
        self._sequences: dict[int, list[np.ndarray]] = {}

    @classmethod
    def load(cls, cfg: Config, target: Any, data: InteractionData) -> ChampionRanker:
        """Load ``target`` (a resolved :class:`tokenrec.mlops.registry.AliasTarget`) for ``data``.

        Raises:
            InputError: the lake's ID maps no longer extend the model's, or the snapshot is older than it.
            tokenrec.mlops.packaging.ModelIntegrityError: its tokenizer differs from the registered one (R11).
        """
        from tokenrec import schema
        from tokenrec.mlops import packaging
        from tokenrec.serving.known_ids import current_ids
        from tokenrec.serving.recommender import Recommender, fold_in_bundle

        model = packaging.load_version(target).configure(cfg)
        lake = schema.Lake.at(cfg.paths.lake)
        current_ids(lake, schema.USERS, data.n_users, model.user_ids)  # same index = same raw id, or raise
        current_ids(lake, schema.ITEMS, data.n_items, model.item_ids)
        tables = fold_in_bundle(model.scorer, model.bundle, training_part(data))
        return cls(Recommender.folded(model.scorer, tables), data, tables.stats)

    def topk(self, users: np.ndarray, split: int, k: int, seen: list[np.ndarray]) -> np.ndarray:
        if split not in self._sequences:
            self._sequences[split] = self.data.sequences_before(split)  # = seen, in time order
        _, items = self.recommender.recommend(np.asarray(users), self._sequences[split], k)
        return items  # (B, k)


def training_part(data: InteractionData) -> InteractionData:
    """``data`` with its training interactions only (same ID space)."""
    keep = data.splits == InteractionData.TRAIN
    return dataclasses.replace(
        data, users=data.users[keep], items=data.items[keep], timestamps=data.timestamps[keep],
        splits=data.splits[keep],
    )  # fmt: skip


@register("mostpop")
def _mostpop(cfg: Config, data: InteractionData, run_dir: Path) -> ScoreRanker:
    return MostPopular(data.item_popularity())


@register("mf")
def _mf(cfg: Config, data: InteractionData, run_dir: Path) -> ScoreRanker:
    seed_everything(cfg.train.seed)
    model = MatrixFactorization(data.n_users, data.n_items, cfg.mf.dim, cfg.mf.init_std)
    train_bpr(model, data, cfg.mf, cfg.train, cfg.eval.ks, RunFolder(run_dir).baseline("mf"), name="mf")
    return EmbeddingRanker(*model.propagate())


def _sasrec(name: str, loss: str | None) -> RankerBuilder:
    """SASRec trained with ``loss`` (None: ``sasrec.loss``), checkpoints under ``run_dir/eval/<name>``."""

    def build(cfg: Config, data: InteractionData, run_dir: Path) -> ScoreRanker:
        settings = cfg.sasrec if loss is None else dataclasses.replace(cfg.sasrec, loss=loss)
        seed_everything(cfg.train.seed)
        model = build_sasrec(data, settings)
        train_sasrec(
            model, data, settings, cfg.train, cfg.eval.ks, RunFolder(run_dir).baseline(name), name=name
        )
        return SequenceRanker(model, data, settings.max_len)

    return build


register("sasrec")(_sasrec("sasrec", None))
register("sasrec_bce")(_sasrec("sasrec_bce", "bce"))  # the SASRec paper's loss, beside the softmax one


@register("lightgcn")
def _lightgcn(cfg: Config, data: InteractionData, run_dir: Path) -> ScoreRanker:
    return _gnn_ranker(data, run_dir, "user", "item")


@register("lightgcn_ego")
def _lightgcn_ego(cfg: Config, data: InteractionData, run_dir: Path) -> ScoreRanker:
    return _gnn_ranker(data, run_dir, "user_ego", "item_ego")


def _gnn_ranker(data: InteractionData, run_dir: Path, user_key: str, item_key: str) -> ScoreRanker:
    run = RunFolder(run_dir)
    tensors = load_embeddings(run, [user_key, item_key])
    users, items = tensors[user_key], tensors[item_key]
    if users.shape[0] != data.n_users or items.shape[0] != data.n_items:
        raise InputError(
            run.embeddings,
            f"embeddings cover {users.shape[0]} users and {items.shape[0]} items, the snapshot "
            f"{data.n_users} and {data.n_items}",
            "Run `tokenrec train-gnn` on this snapshot into this run folder first.",
        )
    return EmbeddingRanker(users, items)


def _tokenrec(name: str) -> RankerBuilder:
    """TokenRec variants (tokenrec, tokenrec_id_only, tokenrec_unseen_prompt) from ``run_dir/llm``."""

    def build(cfg: Config, data: InteractionData, run_dir: Path) -> ScoreRanker | TopKRanker:
        from tokenrec.llm.scorer import ranker_for  # imports transformers: only when asked for

        return ranker_for(cfg, data, run_dir, name=name)

    return build


for _name in ("tokenrec", "tokenrec_id_only", "tokenrec_unseen_prompt"):
    register(_name)(_tokenrec(_name))


@register("tokenrec_paper_scoring")
def _tokenrec_paper_scoring(cfg: Config, data: InteractionData, run_dir: Path) -> TopKRanker:
    """The same trained TokenRec scored as the paper does (cosine, no user-token vector), whatever retrieval says."""
    from tokenrec.llm.scorer import ranker_for

    paper = dataclasses.replace(cfg.retrieval, normalize_items=True, user_token_weight=0.0)
    return ranker_for(dataclasses.replace(cfg, retrieval=paper), data, run_dir, name="tokenrec")

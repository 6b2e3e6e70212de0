"""Baselines (most-popular, BPR-MF, SASRec), the evaluation with exclusion, and the evaluate stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenrec.config import MfConfig, SasRecConfig, TrainConfig, load_config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import ConfigError
from tokenrec.evaluation.protocol import EmbeddingRanker, SeenItems, evaluate_split
from tokenrec.models.mf import MatrixFactorization
from tokenrec.models.mostpop import MostPopular
from tokenrec.models.sasrec import SASRec
from tokenrec.tasks import evaluate, train_gnn
from tokenrec.training.gnn import train_bpr
from tokenrec.training.sasrec import SequenceRanker, build_sasrec, left_padded, train_sasrec

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]

TRAIN, VALID, TEST = InteractionData.TRAIN, InteractionData.VALID, InteractionData.TEST


@pytest.fixture
def tiny() -> InteractionData:
    """3 users, 4 items. Training popularity: items 0 and 1 twice, 2 and 3 once."""
    rows = [  # user, item, split
        (0, 0, TRAIN), (0, 1, TRAIN), (0, 2, VALID), (0, 3, TEST),
        (1, 0, TRAIN), (1, 2, TRAIN), (1, 1, VALID), (1, 3, TEST),
        (2, 1, TRAIN), (2, 3, TRAIN), (2, 2, VALID), (2, 0, TEST),
    ]  # fmt: skip
    users, items, splits = (np.array(col) for col in zip(*rows, strict=True))
    return InteractionData.from_arrays(users, items, np.arange(len(rows)), splits, 3, 4)


def test_most_popular_with_exclusion_by_hand(tiny: InteractionData) -> None:
    ranker = MostPopular(tiny.item_popularity())  # order 0, 1, 2, 3
    valid = evaluate_split(tiny, ranker, VALID, ks=[1, 2])
    # user 0 ranks [2, 3] -> 1st; user 1 ranks [1, 3] -> 1st; user 2 ranks [0, 2] -> 2nd
    assert valid["HR@1"] == pytest.approx(2 / 3)
    assert valid["NDCG@2"] == pytest.approx((2 + 1 / math.log2(3)) / 3)
    # test also excludes the validation item: each user has one item left, the target
    test = evaluate_split(tiny, ranker, TEST, ks=[1])
    assert test == {"HR@1": 1.0, "NDCG@1": 1.0}


def test_seen_items_are_everything_before_the_split(tiny: InteractionData) -> None:
    seen = SeenItems(tiny, TEST)
    assert sorted(seen.of(2).tolist()) == [1, 2, 3]
    rows, items = seen.pairs(np.array([2, 0]))
    assert sorted(zip(rows.tolist(), items.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert SeenItems(tiny, VALID).of(1).tolist() == [0, 2]


def test_mf_learns_and_beats_most_popular(walks: InteractionData) -> None:
    model = MatrixFactorization(walks.n_users, walks.n_items, 32)
    settings = MfConfig(dim=32, lr=0.01, batch_size=256, max_epochs=30, eval_every=10, patience=30)
    result = train_bpr(model, walks, settings, TrainConfig(progress=False), name="mf")
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    mf = evaluate_split(walks, EmbeddingRanker(*model.propagate()), VALID)
    popular = evaluate_split(walks, MostPopular(walks.item_popularity()), VALID)
    assert mf["NDCG@20"] > popular["NDCG@20"] + 0.1


def test_left_padding_keeps_the_most_recent_items() -> None:
    got = left_padded([np.array([5, 6, 7]), np.array([1]), np.array([], dtype=np.int64)], max_len=2)
    assert got.tolist() == [[7, 8], [0, 2], [0, 0]]  # tokens are item + 1


def test_sasrec_is_causal_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = SASRec(n_items=30, dim=16, layers=2, heads=2, max_len=8, dropout=0.1).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    hidden = model(seq)
    assert hidden.shape == (2, 6, 16)
    changed = seq.clone()
    changed[:, -1] = 9  # a later item must not change earlier positions
    torch.testing.assert_close(model(changed)[:, :-1], hidden[:, :-1])
    padded = torch.cat([torch.zeros(2, 2, dtype=torch.long), seq], dim=1)  # more left padding
    torch.testing.assert_close(model(padded)[:, -4:], hidden[:, -4:], rtol=1e-5, atol=1e-5)
    assert model.score_next(seq).shape == (2, 30)


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_sasrec_learns_the_walks(walks: InteractionData, loss: str) -> None:
    settings = SasRecConfig(dim=32, layers=1, heads=2, max_len=12, dropout=0.1, lr=3e-3, batch_size=64, loss=loss)
    settings.max_epochs, settings.eval_every, settings.patience = 25, 25, 25
    model = build_sasrec(walks, settings)
    result = train_sasrec(model, walks, settings, TrainConfig(progress=False))
    assert result.history[-1]["loss"] < result.history[0]["loss"] - (1.0 if loss == "softmax" else 0.3)
    sasrec = evaluate_split(walks, SequenceRanker(model, walks, settings.max_len), VALID)
    popular = evaluate_split(walks, MostPopular(walks.item_popularity()), VALID)
    assert sasrec["HR@10"] > popular["HR@10"] + 0.3


class _Oracle:
    """A TopKRanker that always puts the split's target first (tests the top-K path and the registry)."""

    def __init__(self, data: InteractionData) -> None:
        self.data = data

    def topk(self, users: np.ndarray, split: int, k: int, seen: list[np.ndarray]) -> np.ndarray:
        target_users, targets = self.data.targets(split)
        lookup = dict(zip(target_users.tolist(), targets.tolist(), strict=True))
        return np.array([[lookup[u]] + [i for i in range(k + 1) if i != lookup[u]][: k - 1] for u in users])


@pytest.mark.slow
def test_train_gnn_and_evaluate_stages_write_the_contract(walks_snapshot: Path, tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            "train.progress=false", f"paths.home={tmp_path / 'home'}",
            "gnn.dim=16", "gnn.max_epochs=4", "gnn.eval_every=2", "gnn.lr=0.01",
            "mf.dim=16", "mf.max_epochs=4", "mf.eval_every=2",
            "sasrec.dim=16", "sasrec.layers=1", "sasrec.max_epochs=2",
            "eval.baselines=[mostpop, mf, lightgcn, lightgcn_ego, sasrec, sasrec_bce, oracle]",
        ]
    )  # fmt: skip
    run_dir = tmp_path / "run"
    summary = train_gnn.run(cfg, walks_snapshot, run_dir)
    assert summary["epochs"] == 4 and summary["best_epoch"] in (2, 4)
    from safetensors.torch import load_file

    tensors = load_file(run_dir / "gnn" / "embeddings.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "user_ego": (240, 16), "item_ego": (120, 16), "user": (240, 16), "item": (120, 16)
    }  # fmt: skip
    assert all(v.dtype == torch.float32 for v in tensors.values())
    gnn_metrics = json.loads((run_dir / "gnn" / "metrics.json").read_text())
    assert set(gnn_metrics["test"]) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (10, 20, 30)}
    assert len(json.loads((run_dir / "gnn" / "history.json").read_text())) == 4

    evaluate.register("oracle")(lambda cfg, data, run_dir: _Oracle(data))
    try:
        evaluate.run(cfg, walks_snapshot, run_dir)
    finally:
        evaluate.REGISTRY.pop("oracle")
    doc = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert doc["dataset"] == "synthetic" and doc["protocol"]["ks"] == [10, 20, 30]
    for name in ("mostpop", "mf", "lightgcn", "lightgcn_ego", "sasrec", "sasrec_bce", "oracle"):
        assert set(doc[name]) == {"valid", "test"}
        assert set(doc[name]["valid"]) == set(gnn_metrics["valid"])
    assert doc["lightgcn"] == {"valid": gnn_metrics["valid"], "test": gnn_metrics["test"]}
    assert doc["oracle"]["test"]["NDCG@10"] == 1.0
    assert (run_dir / "eval" / "config.yaml").is_file() and (run_dir / "gnn" / "config.yaml").is_file()


def test_train_gnn_keeps_the_seed_best_on_validation(walks_snapshot: Path, tmp_path: Path) -> None:
    base = ["train.progress=false", "gnn.dim=16", "gnn.max_epochs=2", "gnn.eval_every=1", "gnn.lr=0.01"]
    train_gnn.run(load_config(overrides=[*base, "gnn.seeds=3"]), walks_snapshot, tmp_path / "three")
    metrics = json.loads((tmp_path / "three" / "gnn" / "metrics.json").read_text())
    seeds = metrics["seeds"]
    first = load_config().train.seed
    assert [s["seed"] for s in seeds] == [first, first + 1, first + 2]
    best = max(seeds, key=lambda s: s["valid"]["NDCG@20"])
    assert metrics["valid"]["NDCG@20"] == pytest.approx(best["valid"]["NDCG@20"])  # selected on validation
    assert all((tmp_path / "three" / "gnn" / f"seed-{first + r}" / "history.json").is_file() for r in range(3))
    # Each seed is the same training as a one-seed run with that seed.
    train_gnn.run(load_config(overrides=[*base, f"train.seed={best['seed']}"]), walks_snapshot, tmp_path / "one")
    single = json.loads((tmp_path / "one" / "gnn" / "metrics.json").read_text())
    assert single["valid"] == metrics["valid"] and single["test"] == metrics["test"]


def test_a_rerun_with_other_settings_trains_afresh_and_one_with_more_epochs_continues(
    walks_snapshot: Path, tmp_path: Path
) -> None:
    base = ["train.progress=false", "gnn.dim=16", "gnn.eval_every=1", "gnn.lr=0.01", "gnn.sampling=edge"]
    run_dir = tmp_path / "run"
    train_gnn.run(load_config(overrides=[*base, "gnn.max_epochs=2"]), walks_snapshot, run_dir)
    history = lambda: json.loads((run_dir / "gnn" / "history.json").read_text())  # noqa: E731
    assert len(history()) == 2
    # more epochs, same trajectory: resumes after epoch 2 (max_epochs does not change the fingerprint)
    train_gnn.run(load_config(overrides=[*base, "gnn.max_epochs=3"]), walks_snapshot, run_dir)
    assert [h["epoch"] for h in history()] == [1, 2, 3]
    folders = list((run_dir / "gnn" / "checkpoints").iterdir())
    # another sampler is another model: never resumed from the edge-sampled checkpoints, which are removed
    train_gnn.run(load_config(overrides=[*base, "gnn.max_epochs=3", "gnn.sampling=user"]), walks_snapshot, run_dir)
    assert [h["epoch"] for h in history()] == [1, 2, 3]
    now = list((run_dir / "gnn" / "checkpoints").iterdir())
    assert len(folders) == len(now) == 1 and folders[0] != now[0]
    clean = tmp_path / "clean"
    train_gnn.run(load_config(overrides=[*base, "gnn.max_epochs=3", "gnn.sampling=user"]), walks_snapshot, clean)
    assert json.loads((clean / "gnn" / "metrics.json").read_text())["valid"] == json.loads(
        (run_dir / "gnn" / "metrics.json").read_text()
    )["valid"]


def test_unknown_model_names_are_rejected(walks_snapshot: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=["eval.baselines=[mostpop, nope]"])
    with pytest.raises(ConfigError, match="nope"):
        evaluate.run(cfg, walks_snapshot, tmp_path)


def test_config_sections_validate() -> None:
    with pytest.raises(ConfigError, match="gnn.output"):
        load_config(overrides=["gnn.output=final"])
    with pytest.raises(ConfigError, match="sasrec.dim"):
        load_config(overrides=["sasrec.dim=30", "sasrec.heads=4"])
    with pytest.raises(ConfigError, match="mf.lr"):
        load_config(overrides=["mf.lr=0"])

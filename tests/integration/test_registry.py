"""Real MLflow registry on a SQLite store: versions, aliases and the promotion gate.

The registered model is a real pyfunc logged from code (no pickle): a linear scorer whose weights are an
``.npy`` artifact, so loading ``models:/<name>@champion`` and predicting shows which version the alias holds.
Each test registers under its own model name in one shared store (the schema takes seconds to create).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tokenrec import registry
from tokenrec.config import Config, MlflowConfig, PathsConfig
from tokenrec.errors import ConfigError

pytestmark = pytest.mark.integration

RETRAIN = "ml100k-2026-11-27"
SNAPSHOT = "/lake/interactions/snapshot_date=2026-11-27"
MODEL_CODE = '''
import mlflow
import numpy as np
import pandas as pd


class LinearScorer(mlflow.pyfunc.PythonModel):
    """Scores = inputs @ weights, the weights read from the model's artifact."""

    def load_context(self, context):
        self.weights = np.load(context.artifacts["weights"], allow_pickle=False)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return np.asarray(model_input, dtype=np.float64) @ self.weights


mlflow.models.set_model(LinearScorer())
'''
X = np.arange(8.0).reshape(2, 4)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Config:
    home = tmp_path_factory.mktemp("home")
    cfg = Config(paths=PathsConfig(home=str(home)))
    cfg.mlflow.tracking_uri = f"sqlite:///{home}/mlflow/mlflow.db"
    return cfg


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("model")
    (folder / "model_code.py").write_text(MODEL_CODE)
    np.save(folder / "w1.npy", np.array([1.0, 0.0, 0.0, 0.0]))
    np.save(folder / "w2.npy", np.array([0.0, 0.0, 0.0, 1.0]))
    return {"code": folder / "model_code.py", "w1": folder / "w1.npy", "w2": folder / "w2.npy"}


@pytest.fixture(scope="module")
def logged_uri(store: Config, model_files: dict[str, Path]) -> str:
    """A pyfunc logged into a ``package`` child run of the retrain (weights w1)."""
    import mlflow  # after tokenrec.registry, which turns MLflow's telemetry off before the first import

    with registry.stage_run(store, RETRAIN, "package", SNAPSHOT):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(model_files["code"]),
            artifacts={"weights": str(model_files["w1"])},
            pip_requirements=["numpy"],
        )
    return info.model_uri


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]) -> Path:
    """The same pyfunc saved to a local folder with other weights (w2)."""
    import mlflow

    path = tmp_path_factory.mktemp("saved") / "model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(model_files["code"]),
        artifacts={"weights": str(model_files["w2"])},
        pip_requirements=["numpy"],
    )
    return path


def named(cfg: Config, model: str, **gate) -> Config:
    """``cfg`` with its own registered model name (and gate settings)."""
    return dataclasses.replace(cfg, mlflow=dataclasses.replace(cfg.mlflow, registered_model=model, **gate))


def evaluation(ndcg: float | None, hr: float | None) -> dict:
    valid = {k: v for k, v in (("NDCG@20", ndcg), ("HR@20", hr)) if v is not None}
    return {
        "tokenrec": {"valid": valid, "test": {"NDCG@20": 0.5}},
        "mostpop": {"valid": {"NDCG@20": 0.01}},
        "dataset": "ml100k",
        "protocol": {"ks": [20]},
    }


def predict(cfg: Config, alias: str) -> np.ndarray:
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}@{alias}").predict(X)


def version_tags(cfg: Config, version: int) -> dict[str, str]:
    client = registry.connect(cfg)[0]
    return dict(client.get_model_version(cfg.mlflow.registered_model, str(version)).tags)


def test_first_version_becomes_champion_with_its_tags(store: Config, logged_uri: str) -> None:
    cfg = named(store, "first")
    version = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), tokenizer_hash="sha-abc")
    assert version == 1
    assert registry.resolve_alias(cfg, "challenger").version == 1
    with pytest.raises(registry.RegistryError, match="no version with alias 'champion'"):
        registry.resolve_alias(cfg, "champion")

    decision = registry.promote(cfg)
    assert decision.passed and "no champion" in decision.reason
    name, champion, run_id, tags = registry.resolve_alias(cfg, "champion")
    assert (name, champion) == ("first", 1) and run_id
    assert tags["retrain_id"] == RETRAIN and tags["tokenizer_hash"] == "sha-abc"
    assert tags["eval_snapshot"] == SNAPSHOT  # from the retrain's parent run
    assert (
        tags["metric.tokenrec.valid.NDCG_at_20"] == "0.1"
        and tags["metric.mostpop.valid.NDCG_at_20"] == "0.01"
    )
    assert not any(key.startswith("metric.protocol") for key in tags)
    assert (tags["gate_passed"], tags["compared_with"]) == ("true", "none")
    np.testing.assert_allclose(predict(cfg, "champion"), X @ [1.0, 0.0, 0.0, 0.0])


def test_worse_version_is_rejected_and_better_one_promoted(
    store: Config, logged_uri: str, saved_folder: Path
) -> None:
    cfg = named(store, "gate")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha-1")
    registry.promote(cfg)

    worse = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.09, 0.25), "sha-2")  # NDCG drops
    decision = registry.promote(cfg)
    assert not decision.passed
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert registry.resolve_alias(cfg, "challenger").version == worse
    tags = version_tags(cfg, worse)
    assert tags["gate_passed"] == "false" and tags["compared_with"] == "1"
    assert "valid.NDCG@20: 0.09 < required 0.1" in tags["rejected"] == tags["gate_reason"]

    better = registry.register(cfg, RETRAIN, saved_folder, evaluation(0.12, 0.20), "sha-3")  # a local folder
    assert registry.promote(cfg).passed
    assert registry.resolve_alias(cfg, "champion").version == better == 3
    assert "rejected" not in version_tags(cfg, better)
    np.testing.assert_allclose(predict(cfg, "champion"), X @ [0.0, 0.0, 0.0, 1.0])  # w2: the saved folder


def test_missing_metric_fails_the_gate(store: Config, logged_uri: str) -> None:
    cfg = named(store, "missing")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha")
    registry.promote(cfg)
    lacking = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.50, None), "sha")
    decision = registry.promote(cfg, version=lacking)
    assert not decision.passed and "valid.HR@20: missing on the challenger" in decision.reasons
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert "missing on the challenger" in version_tags(cfg, lacking)["rejected"]
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.promote(cfg, version=99)


def test_versions_evaluated_on_different_snapshots_are_not_compared(store: Config, logged_uri: str) -> None:
    cfg = named(store, "snapshots")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha")
    registry.promote(cfg)
    other = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.90, 0.90), "sha", eval_snapshot="/other")
    decision = registry.promote(cfg)
    assert not decision.passed and "different split" in decision.reason
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert version_tags(cfg, other)["eval_snapshot"] == "/other"


def test_relative_margin_blocks_then_explicit_promotion_clears_rejection(
    store: Config, logged_uri: str
) -> None:
    strict = named(store, "margin", min_rel_improvement=0.01)
    registry.register(strict, RETRAIN, logged_uri, evaluation(0.100, 0.200), "sha")
    registry.promote(strict)
    slight = registry.register(strict, RETRAIN, logged_uri, evaluation(0.1005, 0.2010), "sha")  # +0.5 %
    assert not registry.promote(strict).passed
    assert "rejected" in version_tags(strict, slight)

    lenient = named(store, "margin", min_rel_improvement=0.0)
    assert registry.promote(lenient, version=slight).passed
    assert registry.resolve_alias(lenient, "champion").version == slight
    tags = version_tags(lenient, slight)
    assert "rejected" not in tags and tags["gate_passed"] == "true"


def test_mlflow_config_rejects_bad_gates() -> None:
    with pytest.raises(ConfigError, match="gated_metrics"):
        MlflowConfig(gated_metrics=[])
    with pytest.raises(ConfigError, match="min_abs_improvement"):
        MlflowConfig(min_abs_improvement=-0.1)

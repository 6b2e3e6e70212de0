"""Real MLflow registry on a SQLite store: versions, aliases, the promotion gate, the retrain's end.

The registry tests use a real pyfunc logged from code (no pickle): a linear scorer whose weights are an
``.npy`` artifact, so loading ``models:/<name>@champion`` and predicting shows which version the alias holds.
Each test registers under its own model name in one shared store (the schema takes seconds to create). The
gate compares the challenger with the champion *as scored on the challenger's split*, the ``champion`` entry
of ``eval/metrics.json`` (:func:`evaluation` writes it by hand here).

The last test runs the real stages end to end on three snapshots with TokenRec models
(:mod:`tests.integration.test_packaging`): ``evaluate`` scores the packaged champion on each newer split with
fold-in, and ``register``/``promote`` act on those numbers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tokenrec import cli
from tokenrec.config import Config, MlflowConfig, PathsConfig
from tokenrec.errors import ConfigError
from tokenrec.mlops import registry, tracking
from tokenrec.tasks import promote as promote_task

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
    import mlflow  # after tokenrec.mlops.registry, which turns MLflow's telemetry off before the first import

    with tracking.stage_run(store, RETRAIN, "package", SNAPSHOT):
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


def evaluation(ndcg: float | None, hr: float | None, champion: tuple | None = None) -> dict:
    """An ``eval/metrics.json``; ``champion``: ``(version, ndcg, hr)`` scored on the same split, or None."""
    valid = {k: v for k, v in (("NDCG@20", ndcg), ("HR@20", hr)) if v is not None}
    document = {
        "tokenrec": {"valid": valid, "test": {"NDCG@20": 0.5}},
        "mostpop": {"valid": {"NDCG@20": 0.01}},
        "dataset": "ml100k",
        "protocol": {"ks": [20]},
        "champion": {"name": "tokenrec", "version": None, "note": "no champion"},
    }
    if champion is not None:
        version, old_ndcg, old_hr = champion
        scores = {"valid": {"NDCG@20": old_ndcg, "HR@20": old_hr}, "test": {"NDCG@20": 0.4}}
        document["champion"] = {"name": "tokenrec", "version": version, **scores}
    return document


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
    assert tags["eval_champion_version"] == "none" and "eval_champion_error" not in tags
    assert (tags["gate_passed"], tags["compared_with"]) == ("true", "none")
    np.testing.assert_allclose(predict(cfg, "champion"), X @ [1.0, 0.0, 0.0, 0.0])


def test_worse_version_is_rejected_and_better_one_promoted(
    store: Config, logged_uri: str, saved_folder: Path
) -> None:
    cfg = named(store, "gate")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha-1")
    registry.promote(cfg)

    worse = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.09, 0.25, (1, 0.10, 0.20)), "sha-2")
    decision = registry.promote(cfg)  # NDCG drops below the champion's on the same split
    assert not decision.passed
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert registry.resolve_alias(cfg, "challenger").version == worse
    tags = version_tags(cfg, worse)
    assert tags["gate_passed"] == "false" and tags["compared_with"] == "1"
    assert "valid.NDCG@20: 0.09 < required 0.1" in tags["rejected"] == tags["gate_reason"]
    assert tags["metric.champion.valid.NDCG_at_20"] == "0.1" and tags["eval_champion_version"] == "1"

    better = registry.register(cfg, RETRAIN, saved_folder, evaluation(0.12, 0.20, (1, 0.10, 0.20)), "sha-3")
    assert registry.promote(cfg).passed  # a local folder, copied into a run first
    assert registry.resolve_alias(cfg, "champion").version == better == 3
    assert "rejected" not in version_tags(cfg, better)
    np.testing.assert_allclose(predict(cfg, "champion"), X @ [0.0, 0.0, 0.0, 1.0])  # w2: the saved folder


def test_rollback_moves_champion_to_a_version_that_passed_the_gate_and_records_why(
    store: Config, logged_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = named(store, "rollback")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha-1")
    registry.promote(cfg)  # v1 champion
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.05, 0.10, (1, 0.10, 0.20)), "sha-2")
    registry.promote(cfg)  # v2 rejected
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.12, 0.30, (1, 0.10, 0.20)), "sha-3")
    registry.promote(cfg)  # v3 champion

    with pytest.raises(registry.RegistryError, match="version 2 .* never passed the promotion gate"):
        registry.rollback(cfg, 2, "try the rejected one")
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.rollback(cfg, 3, "no-op")
    with pytest.raises(registry.RegistryError, match="needs a reason"):
        registry.rollback(cfg, 1, "  ")
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry.rollback(cfg, 9, "typo")
    assert registry.resolve_alias(cfg, "champion").version == 3  # refusals move nothing

    out = registry.rollback(cfg, 1, "lists too popular")
    assert out == {"model": "rollback", "champion": 1, "previous_champion": 3, "reason": "lists too popular"}
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert version_tags(cfg, 3)["rolled_back"].endswith("back to 1: lists too popular")
    assert version_tags(cfg, 1)["rollback_from"] == "3"

    rows = {row["version"]: row for row in registry.versions(cfg)}
    assert list(rows) == [3, 2, 1]
    assert rows[1]["aliases"] == ["champion"] and rows[3]["aliases"] == ["challenger"]
    assert rows[2]["gate_passed"] == "false" and "rejected" in rows[2]["notes"]
    assert rows[3]["metrics"] == {"valid.NDCG@20": 0.12, "valid.HR@20": 0.3, "test.NDCG@20": 0.5}
    assert "rolled_back" in rows[3]["notes"] and "rollback_reason" in rows[1]["notes"]

    where = ["--set", f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}", "--set", "mlflow.registered_model=rollback"]
    assert cli.main(["rollback", "--to-version", "2", "--reason", "again", *where]) == 2
    assert "tokenrec rollback: error: version 2 of 'rollback' never passed" in capsys.readouterr().err
    assert cli.main(["models", *where]) == 0
    assert [row["version"] for row in json.loads(capsys.readouterr().out)] == [3, 2, 1]


def test_missing_metric_fails_the_gate(store: Config, logged_uri: str) -> None:
    cfg = named(store, "missing")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha")
    registry.promote(cfg)
    lacking = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.50, None, (1, 0.1, 0.2)), "sha")
    decision = registry.promote(cfg, version=lacking)
    assert not decision.passed and "valid.HR@20: missing on the challenger" in decision.reasons
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert "missing on the challenger" in version_tags(cfg, lacking)["rejected"]
    unmeasured = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.50, 0.50, (1, 0.1, None)), "sha")
    assert "valid.HR@20: missing on the champion" in registry.promote(cfg, version=unmeasured).reasons
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.promote(cfg, version=99)


def test_a_newer_snapshot_is_compared_with_the_champion_scored_on_that_snapshot(
    store: Config, logged_uri: str
) -> None:
    """The champion's own tags (0.10 on its split) do not count; its numbers on the challenger's split do."""
    cfg = named(store, "snapshots")
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha")
    registry.promote(cfg)
    newer = "/lake/interactions/snapshot_date=2026-12-04"
    # beats the champion's old 0.10, but the champion scores 0.11 on the newer split: rejected
    short = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.105, 0.3, (1, 0.11, 0.2)), "sha", newer)
    decision = registry.promote(cfg)
    assert not decision.passed and "valid.NDCG@20: 0.105 < required 0.11 (champion 0.11)" in decision.reason
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert version_tags(cfg, short)["eval_snapshot"] == newer
    # below the champion's old 0.10 on its own split, but above what the champion scores here: promoted
    ahead = registry.register(cfg, RETRAIN, logged_uri, evaluation(0.095, 0.25, (1, 0.09, 0.2)), "sha", newer)
    assert registry.promote(cfg).passed
    assert registry.resolve_alias(cfg, "champion").version == ahead


@pytest.mark.parametrize(
    ("champion_entry", "reason"),
    [
        ("absent", "eval/metrics.json has no champion entry"),
        ({"version": None}, "there was no champion when it was evaluated"),
        ({"version": 7, "valid": {"NDCG@20": 0.0, "HR@20": 0.0}}, "it was evaluated against version 7"),
        (
            {"version": 1, "error": "ID maps changed"},
            "could not be scored on the challenger's split: ID maps",
        ),
    ],
    ids=["no entry", "no champion at evaluation", "another champion", "scoring failed"],
)
def test_without_numbers_of_the_current_champion_on_the_same_split_the_gate_fails(
    store: Config, logged_uri: str, champion_entry, reason: str, request: pytest.FixtureRequest
) -> None:
    cfg = named(store, "unmeasured-" + request.node.callspec.id.replace(" ", "-"))
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha")
    registry.promote(cfg)
    document = evaluation(0.90, 0.90)  # far better, but not shown to be better than the champion
    if champion_entry == "absent":
        del document["champion"]
    else:
        document["champion"] = {"name": "tokenrec", **champion_entry}
    version = registry.register(cfg, RETRAIN, logged_uri, document, "sha")
    decision = registry.promote(cfg)
    assert not decision.passed and reason in decision.reason
    assert registry.resolve_alias(cfg, "champion").version == 1
    assert version_tags(cfg, version)["rejected"] == decision.reason


def test_relative_margin_blocks_then_explicit_promotion_clears_rejection(
    store: Config, logged_uri: str
) -> None:
    strict = named(store, "margin", min_rel_improvement=0.01)
    registry.register(strict, RETRAIN, logged_uri, evaluation(0.100, 0.200), "sha")
    registry.promote(strict)
    plus_half_percent = evaluation(0.1005, 0.2010, (1, 0.100, 0.200))
    slight = registry.register(strict, RETRAIN, logged_uri, plus_half_percent, "sha")
    assert not registry.promote(strict).passed
    assert "rejected" in version_tags(strict, slight)

    lenient = named(store, "margin", min_rel_improvement=0.0)
    assert registry.promote(lenient, version=slight).passed
    assert registry.resolve_alias(lenient, "champion").version == slight
    tags = version_tags(lenient, slight)
    assert "rejected" not in tags and tags["gate_passed"] == "true"


def test_promote_task_ends_the_retrain_run_and_refuses_a_challenger_of_another_retrain(
    store: Config, logged_uri: str, tmp_path: Path
) -> None:
    cfg = named(store, "ending")
    client = registry.connect(cfg)[0]
    registry.register(cfg, RETRAIN, logged_uri, evaluation(0.10, 0.20), "sha")
    outcome = promote_task.run(cfg, "2026-11-27", tmp_path / RETRAIN)
    assert outcome["promoted"] and outcome["retrain_id"] == RETRAIN
    parent = client.get_run(tracking.retrain_run(cfg, RETRAIN))
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["tokenrec.promoted"], parent.data.tags["tokenrec.model_version"]) == (
        "true",
        "1",
    )

    other = "ml100k-2026-12-04"
    with pytest.raises(registry.RegistryError, match=f"comes from retrain '{RETRAIN}', not '{other}'"):
        promote_task.run(cfg, "2026-12-04", tmp_path / other)  # its register never ran
    failed = client.get_run(tracking.retrain_run(cfg, other))
    assert failed.info.status == "FAILED" and failed.data.tags["tokenrec.failed_stage"] == "promote"

    registry.register(cfg, other, logged_uri, evaluation(0.01, 0.01, (1, 0.10, 0.20)), "sha")
    rejected = promote_task.run(cfg, "2026-12-04", tmp_path / other)  # a rejection is an outcome
    assert not rejected["promoted"] and rejected["champion"] == 1
    again = client.get_run(tracking.retrain_run(cfg, other))
    assert again.info.status == "FINISHED" and again.data.tags["tokenrec.promoted"] == "false"
    assert "valid.NDCG@20: 0.01 < required 0.1" in again.data.tags["tokenrec.gate_reason"]


def test_mlflow_config_rejects_bad_gates() -> None:
    with pytest.raises(ConfigError, match="gated_metrics"):
        MlflowConfig(gated_metrics=[])
    with pytest.raises(ConfigError, match="min_abs_improvement"):
        MlflowConfig(min_abs_improvement=-0.1)


# ------------------------------------------------------------------------------ end to end, real models


@pytest.mark.slow  # trains a tiny LLM4Rec for 2 epochs and packages three models: ~1 min on a busy 2-core box
def test_real_models_on_three_snapshots_are_compared_on_each_newer_split(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """R6 across snapshots: evaluate scores the packaged champion on the challenger's split (fold-in)."""
    import torch

    from tests.integration.test_packaging import (
        DS,
        N_ITEMS,
        N_USERS,
        build_world,
        publish_snapshot,
        write_run,
    )
    from tests.models.conftest import make_walks
    from tokenrec.config import load_config
    from tokenrec.storage import read_json
    from tokenrec.tasks import evaluate, register, train_llm

    world = build_world(tmp_path_factory.mktemp("snapshots"))
    only = dataclasses.replace(world.cfg.eval, baselines=["mostpop", "tokenrec"], ks=[10, 20])  # D1: 24 items
    cfg = dataclasses.replace(world.cfg, eval=only)
    client = registry.connect(cfg)[0]

    def retrain(ds: str, run_dir: Path) -> tuple[dict, dict, dict]:
        """evaluate -> register -> promote: (metrics.json, promote's outcome, the version's tags)."""
        evaluate.run(cfg, world.lake.interactions(ds), run_dir)
        metrics = read_json(run_dir / "eval" / "metrics.json")
        version = register.run(cfg, ds, run_dir)["version"]
        outcome = promote_task.run(cfg, ds, run_dir)
        return metrics, outcome, version_tags(cfg, version)

    # D1: the first model (untrained LLM4Rec) becomes champion
    first, outcome, _ = retrain(DS, world.run_dir)
    assert first["champion"]["version"] is None and outcome["champion"] == 1
    # the same model on the same split: the packaged champion scores exactly what the run folder scores
    evaluate.run(cfg, world.lake.interactions(DS), world.run_dir)
    same = read_json(world.run_dir / "eval" / "metrics.json")
    assert same["champion"]["version"] == 1 and same["champion"]["fold_in"]["new_users"] == 0
    assert (same["champion"]["valid"], same["champion"]["test"]) == (
        same["tokenrec"]["valid"],
        same["tokenrec"]["test"],
    )

    # D2: 48 new users and 24 new items; an LLM4Rec trained on it beats the champion on D2's split
    d2, d3 = "2026-12-04", "2026-12-11"
    data2 = make_walks(n_users=96, n_items=48, clusters=4, length=9)
    publish_snapshot(world.lake, d2, data2, N_USERS, N_ITEMS)
    run2 = write_run(cfg, world.lake.interactions(d2), Path(cfg.paths.runs) / f"synthetic-{d2}", data2)
    training = load_config(overrides=["llm.max_epochs=2", "llm.lr=0.001", "llm.head_lr=0.003",
                                      "llm.batch_size=16", "llm.eval_batch_size=64"],
                           base=cfg.to_dict())  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_llm.run(training, world.lake.interactions(d2), run2)
    finally:
        torch.set_num_threads(threads)
    second, outcome, tags = retrain(d2, run2)
    champion_on_d2 = second["champion"]
    assert champion_on_d2["version"] == 1 and champion_on_d2["trained_on"].endswith(f"snapshot_date={DS}")
    assert champion_on_d2["fold_in"]["new_users"] == 48 and champion_on_d2["fold_in"]["new_items"] == 24
    assert second["tokenrec"]["valid"]["NDCG@20"] > champion_on_d2["valid"]["NDCG@20"] + 0.1
    assert outcome["promoted"] and outcome["champion"] == 2
    assert tags["eval_snapshot"].endswith(f"snapshot_date={d2}") and tags["eval_champion_version"] == "1"
    assert tags["metric.champion.valid.NDCG_at_20"] == repr(champion_on_d2["valid"]["NDCG@20"])
    assert f"(champion {champion_on_d2['valid']['NDCG@20']:.6g})" in tags["gate_reason"]

    # D3: 4 more users; an untrained LLM4Rec loses against champion 2 scored on D3: the alias stays
    data3 = make_walks(n_users=100, n_items=48, clusters=4, length=9)
    publish_snapshot(world.lake, d3, data3, 96, 48)
    run3 = write_run(cfg, world.lake.interactions(d3), Path(cfg.paths.runs) / f"synthetic-{d3}", data3)
    third, outcome, tags = retrain(d3, run3)
    assert third["champion"]["version"] == 2 and third["champion"]["fold_in"]["new_users"] == 4
    assert third["tokenrec"]["valid"]["NDCG@20"] < third["champion"]["valid"]["NDCG@20"]
    assert not outcome["promoted"] and outcome["champion"] == 2
    assert registry.resolve_alias(cfg, "champion").version == 2
    assert tags["rejected"] == tags["gate_reason"] and "valid.NDCG@20" in tags["rejected"]
    for ds, promoted in ((DS, "true"), (d2, "true"), (d3, "false")):
        parent = client.get_run(tracking.retrain_run(cfg, f"synthetic-{ds}"))
        assert (parent.info.status, parent.data.tags["tokenrec.promoted"]) == ("FINISHED", promoted)

    # back on D1, which is older than champion 2: it cannot be scored there, and the entry says why
    evaluate.run(cfg, world.lake.interactions(DS), world.run_dir)
    stale = read_json(world.run_dir / "eval" / "metrics.json")["champion"]
    assert stale["version"] == 2 and "the snapshot has 48 users, the model knows 96" in stale["error"]
    assert "valid" not in stale

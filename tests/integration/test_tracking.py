"""Real MLflow tracking on a SQLite store: parent run per retrain, child run per stage, what each one holds,
and the parent's status (RUNNING, FAILED when a stage fails, RUNNING again on a retry, FINISHED at the end).

One store per module (creating the SQLite schema takes seconds). Stage folders follow the artifact layout of
the brief (gnn/, tokenizer/, eval/) with small but well-formed files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tokenrec.config import Config, PathsConfig, SparkConfig
from tokenrec.mlops import plots, tracking

pytestmark = pytest.mark.integration

RETRAIN = "ml100k-2026-11-27"
SNAPSHOT = "/lake/interactions/snapshot_date=2026-11-27"
REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A config whose MLflow store is the default one under a fresh home (no MLFLOW_TRACKING_URI)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = Config(paths=PathsConfig(home=str(home)), spark=SparkConfig(conf={"spark.long": "x" * 7000}))
        config.mlflow.tracking_uri = tracking.tracking_uri(config)  # freeze the default for later tests
        yield config


@pytest.fixture(scope="module")
def client(cfg: Config):
    return tracking.connect(cfg)[0]


def write_gnn_dir(folder: Path, epochs: int = 6) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch-6.pt").write_bytes(b"\0" * 64)
    history = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "loss": 1.0 / epoch, "l2": 0.01, "seconds": 0.5}
        if epoch % 2 == 0:
            record["valid"] = {"HR@20": 0.05 * epoch, "NDCG@20": 0.02 * epoch}
        history.append(record)
    (folder / "history.json").write_text(json.dumps(history))
    metrics = {
        "valid": {"HR@20": 0.3, "NDCG@20": 0.12},
        "test": {"HR@20": 0.28, "NDCG@20": 0.11},
        "best_epoch": 6,
        "dataset": "ml100k",
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(0)
    save_file(
        {"user": rng.random((30, 8), dtype=np.float32), "item": rng.random((40, 8), dtype=np.float32)},
        str(folder / "embeddings.safetensors"),
    )
    return folder


def write_tokenizer_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    record = {"loss": 1.0, "recon": 0.9, "usage": [0.5, 0.75, 1.0], "perplexity": [10.0, 12.0, 14.0]}
    history = {
        e: [{**record, "epoch": i + 1, "loss": 1.0 / (i + 1)} for i in range(3)] for e in ("user", "item")
    }
    (folder / "history.json").write_text(json.dumps(history))
    stats = {
        e: {
            "entities": 40,
            "codebook_size": 16,
            "usage": [0.5, 0.75, 1.0],
            "perplexity": [7.0, 9.0, 12.0],
            "colliding_entities": 3,
            "kind": "mq",
        }
        for e in ("user", "item")
    }
    (folder / "stats.json").write_text(json.dumps(stats))
    (folder / "tokens.safetensors").write_bytes(b"\0" * 16)
    return folder


def eval_metrics() -> dict:
    ks = {"HR@10": 0.1, "NDCG@10": 0.05, "HR@20": 0.2, "NDCG@20": 0.08}
    return {
        "mostpop": {"valid": ks, "test": ks},
        "tokenrec": {"valid": {k: 2 * v for k, v in ks.items()}, "test": ks},
        "champion": {"name": "tokenrec", "version": 3, "valid": ks, "test": ks, "fold_in": {"new_users": 4}},
        "dataset": "ml100k",
        "protocol": {"ks": [10, 20]},
    }


def stage_runs(client, cfg: Config, stage: str, retrain: str = RETRAIN) -> list:
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    query = f"tags.`tokenrec.retrain_id` = '{retrain}' and tags.`tokenrec.stage` = '{stage}'"
    return client.search_runs([experiment], query, order_by=["attributes.start_time ASC"])


def test_default_store_and_artifact_root_live_under_home(cfg: Config, client) -> None:
    home = Path(cfg.paths.home).resolve()
    assert cfg.mlflow.tracking_uri == f"sqlite:///{home}/mlflow/mlflow.db"
    experiment = client.get_experiment_by_name("tokenrec")
    assert experiment.artifact_location == (home / "mlflow" / "artifacts").as_uri()
    assert (home / "mlflow" / "mlflow.db").is_file()


@pytest.mark.slow  # a second Python process imports MLflow: ~5 s idle, ~15 s on a busy machine
def test_stages_from_separate_processes_share_one_parent(cfg: Config, client, tmp_path: Path) -> None:
    gnn = tracking.log_stage(cfg, RETRAIN, "train-gnn", write_gnn_dir(tmp_path / "gnn"), SNAPSHOT)
    tok_dir = write_tokenizer_dir(tmp_path / "tokenizer")
    script = textwrap.dedent(f"""
        from tokenrec.mlops import tracking
        from tokenrec.config import Config, PathsConfig
        cfg = Config(paths=PathsConfig(home={cfg.paths.home!r}))
        cfg.mlflow.tracking_uri = {cfg.mlflow.tracking_uri!r}
        print(tracking.log_stage(cfg, {RETRAIN!r}, "train-tokenizer", {str(tok_dir)!r}, {SNAPSHOT!r}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    tokenizer = done.stdout.strip().splitlines()[-1]

    experiment = client.get_experiment_by_name("tokenrec").experiment_id
    parents = client.search_runs(
        [experiment], f"tags.`tokenrec.retrain_id` = '{RETRAIN}' and tags.`tokenrec.role` = 'retrain'"
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == RETRAIN
    assert client.get_run(gnn).data.tags["tokenrec.config_hash"] == cfg.hash()
    for run_id, stage in ((gnn, "train-gnn"), (tokenizer, "train-tokenizer")):
        run = client.get_run(run_id)
        assert run.info.run_name == stage
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["tokenrec.snapshot"] == SNAPSHOT
        assert run.data.tags["tokenrec.snapshot_date"] == "2026-11-27"
        assert run.data.tags["tokenrec.git_commit"] == tracking.git_commit() != ""
        assert run.data.tags["tokenrec.current"] == "true"
        assert run.info.status == "FINISHED"


def test_params_metrics_artifacts_and_plots_are_logged(cfg: Config, client, tmp_path: Path) -> None:
    run_id = tracking.log_stage(cfg, "logged-1", "train-gnn", write_gnn_dir(tmp_path / "gnn"), SNAPSHOT)
    run = client.get_run(run_id)
    params = run.data.params
    assert params["gnn.dim"] == "64" and params["eval.ks"] == "[10, 20, 30]"
    assert params["mlflow.gated_metrics"] == '["valid.NDCG@20", "valid.HR@20"]'
    assert len(params["spark.conf.spark.long"]) == 6000 and params["spark.conf.spark.long"].endswith("...")

    loss = client.get_metric_history(run_id, "epoch.loss")
    assert [m.step for m in loss] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in loss] == pytest.approx([1 / e for e in range(1, 7)])
    ndcg = client.get_metric_history(run_id, "epoch.valid.NDCG_at_20")
    assert [(m.step, round(m.value, 6)) for m in ndcg] == [(2, 0.04), (4, 0.08), (6, 0.12)]
    assert run.data.metrics["valid.NDCG_at_20"] == pytest.approx(0.12)  # final: the selected epoch
    assert run.data.metrics["test.HR_at_20"] == pytest.approx(0.28)
    assert run.data.metrics["best_epoch"] == 6
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["train-gnn.valid.NDCG_at_20"] == pytest.approx(0.12)

    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"embeddings.safetensors", "history.json", "metrics.json", "plots"}  # checkpoints excluded
    pngs = {a.path: a.file_size for a in client.list_artifacts(run_id, "plots")}
    assert set(pngs) == {"plots/training_curves.png"}  # gnn/metrics.json is one model: no comparison chart
    assert all(size > 1000 for size in pngs.values())
    local = Path(client.download_artifacts(run_id, "plots/training_curves.png", str(tmp_path)))
    assert local.read_bytes().startswith(PNG)
    stored = Path(cfg.paths.home) / "mlflow" / "artifacts"
    assert list(stored.rglob("embeddings.safetensors")), "artifacts must land under the configured root"


def test_tokenizer_and_eval_folders_log_levels_and_models(cfg: Config, client, tmp_path: Path) -> None:
    tok = tracking.log_stage(cfg, "logged-2", "train-tokenizer", write_tokenizer_dir(tmp_path / "tok"))
    history = client.get_metric_history(tok, "epoch.item.usage.2")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 1.0), (3, 1.0)]
    metrics = client.get_run(tok).data.metrics
    assert metrics["stats.user.perplexity.0"] == 7.0 and metrics["stats.item.colliding_entities"] == 3
    assert "plots/codebook_usage.png" in {a.path for a in client.list_artifacts(tok, "plots")}

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(eval_metrics()))
    write_gnn_dir(tmp_path / "eval" / "mf")  # a baseline trained by evaluate, with its own history.json
    ev = tracking.log_stage(cfg, "logged-2", "evaluate", tmp_path / "eval")
    metrics = client.get_run(ev).data.metrics
    assert metrics["tokenrec.valid.NDCG_at_20"] == pytest.approx(0.16)
    assert metrics["mostpop.test.HR_at_10"] == pytest.approx(0.1)
    assert metrics["champion.valid.NDCG_at_20"] == pytest.approx(0.08)  # the champion on the same split
    assert metrics["champion.fold_in.new_users"] == 4 and "champion.version" not in metrics
    assert not any(key.startswith("protocol") for key in metrics)
    assert {a.path for a in client.list_artifacts(ev, "plots")} == {
        "plots/metrics_valid.png",
        "plots/metrics_test.png",
        "plots/training_curves_mf.png",
    }


def test_rerun_supersedes_and_failed_rerun_keeps_the_previous_result(cfg: Config, client, tmp_path) -> None:
    folder = write_gnn_dir(tmp_path / "gnn")
    first = tracking.log_stage(cfg, "rerun-1", "train-gnn", folder, SNAPSHOT)
    second = tracking.log_stage(cfg, "rerun-1", "train-gnn", folder, SNAPSHOT)
    with (
        pytest.raises(RuntimeError, match="killed"),
        tracking.stage_run(cfg, "rerun-1", "train-gnn", SNAPSHOT),
    ):
        raise RuntimeError("killed")

    runs = stage_runs(client, cfg, "train-gnn", "rerun-1")
    assert [r.info.run_id for r in runs[:2]] == [first, second] and len(runs) == 3
    old, new, failed = (client.get_run(r.info.run_id) for r in runs)
    assert old.data.tags["tokenrec.current"] == "false"
    assert old.data.tags["tokenrec.superseded_by"] == second
    assert new.data.tags["tokenrec.current"] == "true"
    assert failed.info.status == "FAILED" and failed.data.tags["tokenrec.current"] == "false"
    assert len({r.data.tags["mlflow.parentRunId"] for r in (old, new, failed)}) == 1


def test_parent_run_fails_with_its_stage_runs_again_on_retry_and_finishes_at_the_end(
    cfg: Config, client, tmp_path: Path
) -> None:
    retrain = "status-1"
    tracking.log_stage(cfg, retrain, "train-gnn", write_gnn_dir(tmp_path / "gnn"), SNAPSHOT)
    parent = tracking.retrain_run(cfg, retrain)
    assert client.get_run(parent).info.status == "RUNNING"

    with (
        pytest.raises(RuntimeError, match="out of memory"),
        tracking.failing_retrain(cfg, retrain, "train-llm"),
    ):
        raise RuntimeError("out of memory")
    failed = client.get_run(parent)
    assert failed.info.status == "FAILED" and failed.info.end_time is not None
    assert failed.data.tags["tokenrec.failed_stage"] == "train-llm"
    assert failed.data.tags["tokenrec.error"] == "RuntimeError: out of memory"

    tracking.log_stage(cfg, retrain, "train-llm", write_gnn_dir(tmp_path / "llm"), SNAPSHOT)  # the retry
    assert client.get_run(parent).info.status == "RUNNING"
    assert tracking.end_retrain(cfg, retrain, "FINISHED", {"tokenrec.promoted": "true"}) == parent
    done = client.get_run(parent)
    assert done.info.status == "FINISHED" and done.data.tags["tokenrec.promoted"] == "true"
    with pytest.raises(ValueError, match="FINISHED or FAILED"):
        tracking.end_retrain(cfg, retrain, "KILLED")


def test_disabled_tracking_logs_nothing(cfg: Config, tmp_path: Path) -> None:
    off = Config(paths=cfg.paths)
    off.mlflow.enabled = False
    assert tracking.log_stage(off, "off-1", "train-gnn", write_gnn_dir(tmp_path / "gnn")) is None


def test_stage_plots_cover_curves_model_comparison_and_codebooks(tmp_path: Path) -> None:
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "metrics.json").write_text(json.dumps(eval_metrics()))
    write_gnn_dir(eval_dir / "mf")
    made = {p.name for p in plots.stage_plots(eval_dir, tmp_path / "out-eval", "evaluate")}
    assert made == {"metrics_valid.png", "metrics_test.png", "training_curves_mf.png"}
    tok = {
        p.name for p in plots.stage_plots(write_tokenizer_dir(tmp_path / "tok"), tmp_path / "out-tok", "t")
    }
    assert tok == {"training_curves.png", "codebook_usage.png"}
    gnn = {p.name for p in plots.stage_plots(write_gnn_dir(tmp_path / "gnn"), tmp_path / "out-gnn", "g")}
    assert gnn == {"training_curves.png"}  # gnn/metrics.json holds one model's numbers, no model entries
    assert plots.stage_plots(tmp_path / "out-gnn", tmp_path / "nothing", "x") == []  # only PNGs there


def test_the_champion_bar_is_labelled_with_its_version(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    drawn: list[list[str]] = []
    original = Figure.savefig

    def keep_labels(fig, *args, **kwargs):
        drawn.append([t.get_text() for t in fig.axes[0].get_xticklabels()])
        return original(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", keep_labels)
        plots.plot_model_metrics(eval_metrics(), tmp_path / "m.png", "valid")
    assert drawn == [["mostpop", "tokenrec", "champion v3"]]


def test_plots_write_non_empty_pngs(tmp_path: Path) -> None:
    gnn = write_gnn_dir(tmp_path / "gnn")
    tok = write_tokenizer_dir(tmp_path / "tok")
    made = [
        plots.plot_training_curves(gnn / "history.json", tmp_path / "a.png", "train-gnn"),
        plots.plot_training_curves(json.loads((tok / "history.json").read_text()), tmp_path / "b.png"),
        plots.plot_model_metrics(eval_metrics(), tmp_path / "c.png", split="test"),
        plots.plot_codebook_usage(tok / "stats.json", tmp_path / "d.png"),
        plots.plot_training_curves([], tmp_path / "empty.png"),
    ]
    for path in made:
        assert path.is_file() and path.stat().st_size > 1000 and path.read_bytes().startswith(PNG)


def test_ids_that_could_break_a_search_filter_are_refused(cfg: Config) -> None:
    with pytest.raises(tracking.RegistryError, match="retrain and stage ids"):
        tracking.retrain_run(cfg, "x' or tags.a = 'b")

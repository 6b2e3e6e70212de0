"""Tokenizer training loop (determinism, resume) and the train-tokenizer stage's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tokenrec.artifacts import load_tokenizer
from tokenrec.config import Config, GnnConfig, TokenizerConfig, TrainConfig
from tokenrec.errors import InputError
from tokenrec.run_folder import RunFolder
from tokenrec.tasks import train_tokenizer as stage
from tokenrec.training.tokenizer import fit_tokenizer, planned_epochs

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


def clustered(n: int, dim: int = 16, centres: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g)
    return 0.1 * (means[torch.randint(centres, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g))


def tiny_tokenizer(**overrides) -> TokenizerConfig:
    settings = dict(
        codebooks=3, codebook_size=16, code_dim=8, hidden_dim=32, batch_size=64, epochs=6, lr=3e-3
    )
    settings.update(overrides)
    return TokenizerConfig(**settings)


TRAIN = TrainConfig(device="cpu", seed=7, progress=False)


# ----------------------------------------------------------------------------------------- loop


def test_fit_trains_logs_history_and_tokenizes_every_entity() -> None:
    x = clustered(400)
    result = fit_tokenizer(x, tiny_tokenizer(epochs=12), TRAIN, name="item")
    assert [h["epoch"] for h in result.history] == list(range(1, 13))
    assert result.history[-1]["recon"] < 0.5 * result.history[0]["recon"]
    assert result.codes.shape == (400, 3) and result.codes.dtype == torch.int64
    assert torch.equal(result.codes, result.model.encode(x))
    stats = result.stats
    assert stats["entities"] == 400 and stats["kind"] == "mq" and stats["device"] == "cpu"
    assert len(stats["usage"]) == len(stats["perplexity"]) == 3
    assert 0 <= stats["colliding_entities"] <= 400
    assert stats["recon_mse"] == pytest.approx(
        float(((result.model.reconstruct(x) - x) ** 2).mean()), rel=1e-5
    )
    assert 0.0 <= stats["unexplained_variance"] < 1.0
    assert not result.model.training


def test_fit_is_deterministic_on_cpu() -> None:
    x = clustered(300)
    a = fit_tokenizer(x, tiny_tokenizer(), TRAIN)
    b = fit_tokenizer(x, tiny_tokenizer(), TRAIN)
    assert torch.equal(a.codes, b.codes)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    assert a.history == b.history


def test_resume_from_last_complete_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    x = clustered(300)
    cfg = tiny_tokenizer(epochs=5)
    uninterrupted = fit_tokenizer(x, cfg, TRAIN)

    folder = tmp_path / "ckpt"
    fit_tokenizer(x, cfg, TRAIN, checkpoint_dir=folder)
    # simulate a kill during the last epoch's save: the newest checkpoint is gone, a truncated one is in its place
    newest = sorted(folder.glob("*/step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    resumed = fit_tokenizer(x, cfg, TRAIN, checkpoint_dir=folder)

    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert torch.equal(resumed.codes, uninterrupted.codes)
    for key, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_checkpoints_of_a_different_config_or_input_are_not_resumed(tmp_path: Path) -> None:
    x = clustered(300)
    folder = tmp_path / "ckpt"
    fit_tokenizer(x, tiny_tokenizer(epochs=4), TRAIN, checkpoint_dir=folder)
    changed = tiny_tokenizer(epochs=3, codebook_size=8)
    resumed = fit_tokenizer(x, changed, TRAIN, checkpoint_dir=folder)
    fresh = fit_tokenizer(x, changed, TRAIN)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert torch.equal(resumed.codes, fresh.codes)
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1  # the stale run's checkpoints are gone
    other_input = fit_tokenizer(x * 2, changed, TRAIN, checkpoint_dir=folder)
    assert torch.equal(other_input.codes, fit_tokenizer(x * 2, changed, TRAIN).codes)


def test_epochs_follow_the_step_budget_unless_set() -> None:
    assert planned_epochs(TokenizerConfig(epochs=0, steps=3000, batch_size=512), 22363) == 69  # 44 steps each
    assert planned_epochs(TokenizerConfig(epochs=0, steps=3000, batch_size=512), 1090) == 1000  # 3 steps each
    assert planned_epochs(TokenizerConfig(epochs=7), 1090) == 7
    result = fit_tokenizer(clustered(200), tiny_tokenizer(epochs=0, steps=8, batch_size=64), TRAIN)
    assert len(result.history) == 2 and result.stats["epochs"] == 2


def test_kmeans_kind_needs_no_training() -> None:
    result = fit_tokenizer(clustered(200), tiny_tokenizer(kind="kmeans"), TRAIN)
    assert result.history == [] and result.stats["epochs"] == 0
    assert result.codes.shape == (200, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["mq", "rqvae", "kmeans"])
def test_fit_on_gpu_resumes_and_matches_the_token_table_shape(kind: str, tmp_path: Path) -> None:
    x = clustered(500)
    cfg = tiny_tokenizer(kind=kind, epochs=3)
    gpu = TrainConfig(device="cuda", seed=7, progress=False)
    result = fit_tokenizer(x, cfg, gpu, checkpoint_dir=tmp_path)
    assert result.stats["device"].startswith("cuda") and result.codes.shape == (500, 3)
    on_cpu = result.model.encode(x)  # the returned module is on the CPU; float differences may flip rare ties
    assert float((on_cpu == result.codes).float().mean()) > 0.99
    again = fit_tokenizer(x, cfg, gpu, checkpoint_dir=tmp_path)  # resumes the finished run: no training
    assert torch.equal(again.codes, result.codes)


def test_fit_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        fit_tokenizer(torch.zeros(0, 8), tiny_tokenizer(), TRAIN)


# ----------------------------------------------------------------------------------------- stage


def fake_gnn_run(
    run_dir: Path, n_users: int = 150, n_items: int = 90, dim: int = 16
) -> dict[str, torch.Tensor]:
    """A GNN output as train-gnn writes it: clustered propagated tables and (different) ego tables."""
    tensors = {
        "user": clustered(n_users, dim, seed=1),
        "item": clustered(n_items, dim, seed=2),
        "user_ego": clustered(n_users, 8, seed=3),
        "item_ego": clustered(n_items, 8, seed=4),
    }
    (run_dir / "gnn").mkdir(parents=True)
    save_file(tensors, run_dir / "gnn" / "embeddings.safetensors")
    return tensors


def stage_config(tmp_path: Path, **tokenizer) -> Config:
    cfg = Config()
    cfg.tokenizer = tiny_tokenizer(epochs=3, **tokenizer)
    cfg.train = TRAIN
    return cfg


def test_stage_writes_the_artifact_contract(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tensors = fake_gnn_run(run_dir)
    summary = stage.run(stage_config(tmp_path), tmp_path / "snapshot", run_dir)
    out = run_dir / "tokenizer"
    assert summary["tokenizer_dir"] == str(out) and summary["item"]["entities"] == 90

    tokens = load_file(out / "tokens.safetensors")
    assert tokens["user_codes"].shape == (150, 3) and tokens["user_codes"].dtype == torch.int64
    assert tokens["item_codes"].shape == (90, 3) and tokens["item_codes"].dtype == torch.int64

    stats = json.loads((out / "stats.json").read_text())
    for entity in ("user", "item"):
        for key in ("usage", "perplexity", "recon_mse", "colliding_entities", "unique_tuples"):
            assert key in stats[entity]
        assert len(stats[entity]["usage"]) == 3
    history = json.loads((out / "history.json").read_text())
    assert len(history["user"]) == len(history["item"]) == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["tokenizer"]["epochs"] == 3
    for entity in ("user", "item"):
        assert (out / f"{entity}_codebook_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads((out / "tokenizer.json").read_text())
    assert manifest["kind"] == "mq" and manifest["entities"]["item"]["input_dim"] == 16
    assert summary["tokenizer_hash"] == manifest["tokenizer_hash"] and len(manifest["tokenizer_hash"]) == 64
    assert set(manifest["sha256"]) >= {
        "user_tokenizer.safetensors",
        "item_tokenizer.safetensors",
        "tokens.safetensors",
    }
    # the saved weights rebuild a tokenizer that gives the same token table
    for entity in ("user", "item"):
        model = load_tokenizer(RunFolder(run_dir), entity)
        assert torch.equal(model.encode(tensors[entity]), tokens[f"{entity}_codes"])


def test_stage_rerun_resumes_and_reproduces_the_same_tokenizer(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fake_gnn_run(run_dir)
    first = stage.run(stage_config(tmp_path), tmp_path, run_dir)
    tokens = (run_dir / "tokenizer" / "tokens.safetensors").read_bytes()
    second = stage.run(stage_config(tmp_path), tmp_path, run_dir)
    assert second["tokenizer_hash"] == first["tokenizer_hash"]
    assert (run_dir / "tokenizer" / "tokens.safetensors").read_bytes() == tokens


def test_stage_reads_ego_embeddings_when_configured(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fake_gnn_run(run_dir)
    cfg = stage_config(tmp_path, kind="kmeans")
    cfg.gnn = GnnConfig(output="ego")
    stage.run(cfg, tmp_path / "snapshot", run_dir)
    manifest = json.loads((run_dir / "tokenizer" / "tokenizer.json").read_text())
    assert manifest["embeddings"] == "ego" and manifest["entities"]["user"]["input_dim"] == 8


def test_stage_disambiguation_is_opt_in_and_makes_tuples_unique(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fake_gnn_run(run_dir)
    stage.run(stage_config(tmp_path, kind="single", disambiguate=True), tmp_path / "snapshot", run_dir)
    tokens = load_file(run_dir / "tokenizer" / "tokens.safetensors")
    assert tokens["item_codes"].shape == (90, 2)  # one code + the disambiguation level
    assert torch.unique(tokens["item_codes"], dim=0).shape[0] == 90
    manifest = json.loads((run_dir / "tokenizer" / "tokenizer.json").read_text())
    sizes = manifest["entities"]["item"]["level_sizes"]
    assert sizes[0] == 16 and sizes[1] >= int(tokens["item_codes"][:, 1].max()) + 1
    stats = json.loads((run_dir / "tokenizer" / "stats.json").read_text())
    assert stats["item"]["colliding_entities"] > 0  # the collisions of the method itself are still reported


def test_stage_refuses_missing_or_bad_embeddings(tmp_path: Path) -> None:
    cfg = stage_config(tmp_path)
    with pytest.raises(InputError, match="train-gnn"):
        stage.run(cfg, tmp_path, tmp_path / "empty-run")
    run_dir = tmp_path / "bad-run"
    (run_dir / "gnn").mkdir(parents=True)
    user = clustered(10)
    user[3, 2] = float("nan")
    save_file({"user": user, "item": clustered(10)}, run_dir / "gnn" / "embeddings.safetensors")
    with pytest.raises(InputError, match="NaN"):
        stage.run(cfg, tmp_path, run_dir)
    save_file({"user": clustered(10)}, run_dir / "gnn" / "embeddings.safetensors")
    with pytest.raises(InputError, match="'item'"):
        stage.run(cfg, tmp_path, run_dir)


def test_load_tokenizer_refuses_weights_of_another_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fake_gnn_run(run_dir)
    stage.run(stage_config(tmp_path, kind="kmeans"), tmp_path, run_dir)
    out = run_dir / "tokenizer"
    (out / "user_tokenizer.safetensors").write_bytes((out / "item_tokenizer.safetensors").read_bytes())
    with pytest.raises(InputError, match="differ"):
        load_tokenizer(RunFolder(run_dir), "user")

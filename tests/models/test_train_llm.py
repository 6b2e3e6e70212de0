"""LLM4Rec training (tokenrec/training/llm.py), the train-llm stage and the TokenRec scorer, on a tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.models.conftest import make_walks, write_snapshot
from tokenrec.artifacts import load_run_tables, load_tokenizer
from tokenrec.config import Config, LlmConfig, TrainConfig, load_config
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import InputError
from tokenrec.evaluation.protocol import evaluate_valid_test
from tokenrec.llm.backbone import add_id_tokens, tiny_backbone
from tokenrec.llm.prompts import entity_text
from tokenrec.llm.scorer import TokenRecRanker, TokenRecScorer
from tokenrec.models.llm4rec import LLM4Rec, item_table_loss
from tokenrec.run_folder import RunFolder
from tokenrec.serving.retrieval import normalize_rows
from tokenrec.tasks import evaluate, train_tokenizer
from tokenrec.tasks import train_llm as stage
from tokenrec.training.llm import LlmTrainer, Ranks, prompts_for, train_llm
from tokenrec.training.llm_samples import PrefixSamples

pytestmark = pytest.mark.model

N_USERS, N_ITEMS, CLUSTERS, DIM = 96, 48, 4, 16
SETTINGS = [
    "train.device=cpu",
    "train.progress=false",
    "tokenizer.codebook_size=8",
    "tokenizer.code_dim=8",
    "tokenizer.hidden_dim=16",
    "tokenizer.epochs=3",
    "llm.backbone=tiny-bert",
    "llm.batch_size=16",
    "llm.history_len=5",
    "llm.lr=0.001",
    "llm.head_lr=0.003",
    "llm.proj_hidden=32",
    "llm.eval_batch_size=64",
]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def gnn_embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster-shaped user and item vectors matching :func:`make_walks` (user u and item ring u % clusters)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLUSTERS, DIM, generator=g)
    ring = N_ITEMS // CLUSTERS
    items = centres[torch.arange(N_ITEMS) // ring] + 0.3 * torch.randn(N_ITEMS, DIM, generator=g)
    users = centres[torch.arange(N_USERS) % CLUSTERS] + 0.1 * torch.randn(N_USERS, DIM, generator=g)
    return users, items


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, InteractionData]:
    """A snapshot, and a run folder with GNN embeddings and a trained tokenizer (the stage's inputs)."""
    root = tmp_path_factory.mktemp("llm")
    data = make_walks(n_users=N_USERS, n_items=N_ITEMS, clusters=CLUSTERS, length=9)
    snapshot = write_snapshot(data, root / "snapshot")
    run_dir = root / "run"
    (run_dir / "gnn").mkdir(parents=True)
    users, items = gnn_embeddings()
    tensors = {"user": users, "item": items, "user_ego": users.clone(), "item_ego": items.clone()}
    save_file(tensors, run_dir / "gnn" / "embeddings.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_tokenizer.run(load_config(overrides=SETTINGS), snapshot, run_dir)
    torch.set_num_threads(threads)
    return snapshot, run_dir, data


def tables_of(run_dir: Path) -> dict[str, np.ndarray]:
    return load_run_tables(RunFolder(run_dir))


def fresh_model(cfg: Config, seed: int = 0) -> tuple[LLM4Rec, object]:
    torch.manual_seed(seed)
    backbone = tiny_backbone("tiny-bert", seed=seed)
    vocab = add_id_tokens(backbone, 3, 8, seed=seed)
    return LLM4Rec(backbone, DIM, cfg.llm.proj_hidden, cfg.llm.proj_dropout), vocab


# ----------------------------------------------------------------------------------------------- samples


def test_samples_are_every_position_after_the_first_with_the_most_recent_history_in_time_order():
    # user 0: items 5, 3, 7, 1 (train) then 2 (valid), 4 (test); user 1: one training item, no sample
    data = InteractionData.from_arrays(
        users=[0, 0, 0, 0, 0, 0, 1, 1, 1],
        items=[5, 3, 7, 1, 2, 4, 6, 0, 3],
        timestamps=[10, 20, 30, 40, 50, 60, 10, 20, 30],
        splits=[0, 0, 0, 0, 1, 2, 0, 1, 2],
    )
    samples = PrefixSamples(data, history_len=2)
    assert samples.users.tolist() == [0, 0, 0]
    assert samples.targets.tolist() == [3, 7, 1]  # never a validation or test item
    item_codes = np.arange(8)[:, None].repeat(3, axis=1)  # item j has tokens (j, j, j)
    user_codes = np.array([[1, 2, 3], [4, 5, 6]])
    cfg = LlmConfig(history_len=2, history_style="compact")
    prompts = prompts_for(
        samples, np.arange(3), np.zeros(3, bool), user_codes, item_codes, cfg, np.random.default_rng(0)
    )
    shown = [[5], [5, 3], [3, 7]]  # H = 2 most recent items before the target, oldest first
    for prompt, items in zip(prompts, shown, strict=True):
        assert entity_text("user", user_codes[0]) in prompt
        history = "".join(entity_text("item", item_codes[i]) for i in items)
        assert history in prompt
        assert prompt.count("<v1-") == len(items)
    id_only = prompts_for(
        samples, np.arange(3), np.ones(3, bool), user_codes, item_codes, cfg, np.random.default_rng(0)
    )
    assert all("<v1-" not in p and entity_text("user", user_codes[0]) in p for p in id_only)


def test_epoch_plan_is_seeded_caps_samples_per_user_and_draws_negatives_outside_training_items(prepared):
    _, _, data = prepared
    samples = PrefixSamples(data, history_len=50)
    cfg = LlmConfig(training="sampled", loss="hinge", num_negatives=3, samples_per_user=2, id_only_share=0.5)
    plan = samples.epoch_plan(cfg, seed=1, epoch=1)
    again = samples.epoch_plan(cfg, seed=1, epoch=1)
    other = samples.epoch_plan(cfg, seed=1, epoch=2)
    assert all(np.array_equal(plan[k], again[k]) for k in plan)
    assert not np.array_equal(plan["sample"], other["sample"])
    users = samples.users[plan["sample"]]
    assert np.bincount(users).max() == 2 and len(np.unique(users)) == N_USERS  # every user, at most 2
    assert plan["negatives"].shape == (len(plan["sample"]), 3)
    for user, negatives in zip(users, plan["negatives"], strict=True):
        assert not set(negatives.tolist()) & set(data.train_sequences[user].tolist())
    assert 0.3 < plan["id_only"].mean() < 0.7
    full = samples.epoch_plan(LlmConfig(), seed=1, epoch=1)
    assert sorted(full["sample"].tolist()) == list(range(len(samples)))


def test_in_batch_negatives_skip_the_row_s_own_target_and_duplicates():
    z = torch.randn(3, DIM)
    items = torch.randn(5, DIM)
    targets = torch.tensor([0, 1, 0])  # rows 0 and 2 share a target
    no_sampled = torch.zeros(3, 0, dtype=torch.long)
    loss, _ = item_table_loss(
        z, targets, no_sampled, items, margin=-1.0, in_batch_negatives=True
    )  # cos + 1 > 0
    cos = torch.nn.functional.cosine_similarity(z[:, None], items[targets][None], dim=-1)  # (3, 3)
    negatives = [[1], [0, 2], [1]]  # columns of other targets per row
    want = [
        1 - cos[b, b] + torch.stack([cos[b, j] + 1 for j in cols]).mean() for b, cols in enumerate(negatives)
    ]
    assert float(loss) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)


# ------------------------------------------------------------------------------------------------ scorer


def test_scorer_topk_equals_a_brute_force_cosine_topk_with_seen_items_excluded(prepared):
    _, run_dir, data = prepared
    cfg = load_config(overrides=SETTINGS)
    model, _ = fresh_model(cfg)
    tables = tables_of(run_dir)
    vectors = tables["item_vectors"].copy()
    vectors[7] = vectors[3]  # an exact tie: the lower item index must come first
    scorer = TokenRecScorer(
        model, tables["user_codes"], tables["item_codes"], vectors, history_len=5, batch_size=7
    )
    users = np.arange(0, N_USERS, 3)
    sequences = data.sequences_before(data.TEST)
    seen = [sequences[u] for u in users]
    scores, ids = scorer.recommend(users, sequences, k=20, exclude=seen)

    z = scorer.embed(users, sequences)  # (U, d) the projected vectors
    one_by_one = np.stack([scorer.embed(users[i : i + 1], sequences)[0] for i in range(len(users))])
    np.testing.assert_allclose(one_by_one, z, rtol=1e-4, atol=1e-5)  # batching and padding change nothing
    # brute force: every cosine (float64 dot of unit rows, as float32), full sort by (score desc, item asc)
    cos = (normalize_rows(z).astype(np.float64) @ normalize_rows(vectors).astype(np.float64).T).astype(
        np.float32
    )
    for row, user in enumerate(users):
        candidates = [j for j in range(N_ITEMS) if j not in set(seen[row].tolist())]
        ranked = sorted(candidates, key=lambda j: (-cos[row, j], j))[:20]
        assert ids[row].tolist() == ranked, user
        np.testing.assert_array_equal(scores[row], cos[row, ranked])
    tied = [list(row) for row in ids if 3 in row and 7 in row]
    assert tied and all(row.index(7) == row.index(3) + 1 for row in tied)  # equal scores: lower index first


def test_user_token_weight_adds_the_decoded_user_vector_to_the_unit_llm_vector(prepared):
    _, run_dir, data = prepared
    cfg = load_config(overrides=[*SETTINGS, "retrieval.user_token_weight=0.5", "retrieval.normalize_items=false"])
    model, _ = fresh_model(cfg)
    tables = tables_of(run_dir)
    decoder = load_tokenizer(RunFolder(run_dir), "user")
    plain = TokenRecScorer(model, tables["user_codes"], tables["item_codes"], tables["item_vectors"], 5)
    mixed = TokenRecScorer(
        model, tables["user_codes"], tables["item_codes"], tables["item_vectors"], 5,
        retrieval=cfg.retrieval, user_decoder=decoder,
    )  # fmt: skip
    users = np.arange(0, N_USERS, 5)
    sequences = data.sequences_before(data.TEST)
    with torch.no_grad():
        decoded = decoder.decode_codes(torch.as_tensor(tables["user_codes"][users])).numpy()
    expected = normalize_rows(plain.embed(users, sequences)) + 0.5 * normalize_rows(decoded)
    np.testing.assert_allclose(mixed.embed(users, sequences), expected, rtol=1e-5, atol=1e-6)
    # raw items: the unit query against the un-normalised item vectors
    scores, ids = mixed.recommend(users, sequences, k=5)
    raw = normalize_rows(expected) @ tables["item_vectors"].T  # (U, n_items)
    np.testing.assert_allclose(scores, np.take_along_axis(raw, ids, axis=1), rtol=1e-5, atol=1e-6)
    assert (ids[:, 0] == raw.argmax(axis=1)).all()
    with pytest.raises(ValueError, match="needs the user tokenizer"):
        TokenRecScorer(model, tables["user_codes"], tables["item_codes"], tables["item_vectors"], 5,
                       retrieval=cfg.retrieval)  # fmt: skip


# ------------------------------------------------------------------------------------------------- stage


TRAININGS = [("causal", "softmax"), ("causal", "sampled_softmax"), ("causal", "hinge"), ("sampled", "hinge"),
             ("sampled", "softmax")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("training", "loss"), TRAININGS)
def test_stage_learns_writes_the_run_folder_and_the_saved_model_scores_like_the_trained_one(
    prepared, tmp_path, training, loss
):
    snapshot, shared_run, data = prepared
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for part in ("gnn", "tokenizer"):
        (run_dir / part).symlink_to(shared_run / part)
    settings = [f"llm.training={training}", f"llm.loss={loss}", "llm.num_sampled=32"]
    cfg = load_config(overrides=[*SETTINGS, *settings, "llm.max_epochs=3", "llm.token_init=codeword"])
    summary = stage.run(cfg, snapshot, run_dir)
    out = run_dir / "llm"
    for name in ("llm.json", "projection.safetensors", "history.json", "metrics.json", "config.yaml",
                 "training_curve.png", "backbone/model.safetensors", "backbone/backbone.json"):  # fmt: skip
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    targets = data.n_users * (7 if training == "causal" else 6)  # 7 training items per user
    assert history[0]["targets"] == targets  # causal: every item (position 0 included); sampled: every prefix
    metrics = json.loads((out / "metrics.json").read_text())
    best = max(history, key=lambda h: h["valid"]["NDCG@20"])
    assert metrics["best_epoch"] == summary["best_epoch"] == best["epoch"]  # selected on validation only
    assert metrics["tokenrec"]["valid"] == pytest.approx(best["valid"])
    assert metrics["tokenrec"]["valid"]["HR@10"] > 0.5  # the clusters were learned: random is about 0.25

    scorer = TokenRecScorer.from_run(run_dir, cfg)
    again = evaluate_valid_test(data, TokenRecRanker(scorer, data, "full"), cfg.eval.ks, 64)
    assert again["valid"] == pytest.approx(metrics["tokenrec"]["valid"], abs=1e-9)
    assert again["test"] == pytest.approx(metrics["tokenrec"]["test"], abs=1e-9)
    for variant in ("id_only", "unseen_prompt"):
        other = evaluate_valid_test(data, TokenRecRanker(scorer, data, variant), [10], 64)
        assert 0.0 <= other["test"]["HR@10"] <= 1.0


@pytest.mark.slow
def test_validation_and_evaluation_score_with_the_user_token_vector_when_asked(prepared, tmp_path):
    snapshot, run_dir, data = prepared
    run = tmp_path / "run"
    run.mkdir()
    for part in ("gnn", "tokenizer"):
        (run / part).symlink_to(run_dir / part)
    cfg = load_config(overrides=[*SETTINGS, "llm.max_epochs=1", "retrieval.user_token_weight=1"])
    stage.run(cfg, snapshot, run)
    metrics = json.loads((run / "llm" / "metrics.json").read_text())
    history = json.loads((run / "llm" / "history.json").read_text())
    assert metrics["tokenrec"]["valid"] == pytest.approx(history[0]["valid"])  # selection scored the same way
    again = evaluate_valid_test(data, TokenRecRanker(TokenRecScorer.from_run(run, cfg), data), cfg.eval.ks, 64)
    assert again["test"] == pytest.approx(metrics["tokenrec"]["test"], abs=1e-9)
    paper = evaluate.REGISTRY["tokenrec_paper_scoring"](cfg, data, run)
    assert paper.scorer.user_token_weight == 0.0 and paper.scorer.index.cfg.normalize_items
    assert evaluate_valid_test(data, paper, cfg.eval.ks, 64)["test"] != again["test"]


def test_prepare_loads_the_user_tokenizer_exactly_when_scoring_uses_it(prepared):
    """Callers of prepare() other than the stage (the training-speed benchmark) get the user decoder too."""
    snapshot, run_dir, _ = prepared
    for weight, wanted in (("0", False), ("1", True)):
        cfg = load_config(overrides=[*SETTINGS, f"retrieval.user_token_weight={weight}"])
        inputs = stage.prepare(cfg, snapshot, run_dir)
        assert (inputs.user_decoder is not None) is wanted
    trainer = LlmTrainer(inputs.model, inputs.vocab, inputs.data, inputs.tables, cfg.llm, cfg.train,
                         torch.device("cpu"), cfg.eval.ks, None, Ranks(), cfg.retrieval, inputs.user_decoder)  # fmt: skip
    assert trainer.validator.scorer.user_decoder is inputs.user_decoder  # built without "needs the user tokenizer"


def test_stage_rejects_a_token_table_of_another_snapshot(prepared, tmp_path):
    _, run_dir, _ = prepared
    smaller = write_snapshot(
        make_walks(n_users=40, n_items=N_ITEMS, clusters=CLUSTERS, length=9), tmp_path / "s"
    )
    with pytest.raises(InputError, match="96 user token rows but the snapshot has 40 users"):
        stage.run(load_config(overrides=SETTINGS), smaller, run_dir)


def test_codeword_init_reads_the_tokenizer_codewords(prepared):
    _, run_dir, _ = prepared
    books = stage.tokenizer_codebooks(RunFolder(run_dir), "item", levels=4, size=10, seed=0)  # one level, two codes more
    tokenizer = load_tokenizer(RunFolder(run_dir), "item")
    assert books.shape == (4, 10, tokenizer.code_dim)
    for level in range(3):
        codes = torch.zeros(8, 3, dtype=torch.long)
        codes[:, level] = torch.arange(8)
        torch.testing.assert_close(books[level, :8], tokenizer.lookup(codes)[:, level])


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.slow
@pytest.mark.parametrize(("training", "loss"), [("causal", "sampled_softmax"), ("sampled", "hinge")])
def test_resumed_runs_end_exactly_where_an_uninterrupted_run_ends(prepared, tmp_path, training, loss):
    _, run_dir, data = prepared
    cfg = load_config(
        overrides=[*SETTINGS, "llm.max_epochs=2", "llm.checkpoint_steps=4", "llm.samples_per_user=3",
                   f"llm.training={training}", f"llm.loss={loss}", "llm.num_sampled=16", "llm.window_stride=3"]
    )  # fmt: skip
    train = TrainConfig(device="cpu", seed=3, progress=False)
    tables = tables_of(run_dir)
    device = torch.device("cpu")

    def trained(max_epochs: int, out_dir: Path | None) -> tuple[dict[str, torch.Tensor], list]:
        model, vocab = fresh_model(cfg)
        llm = LlmConfig(**{**vars(cfg.llm), "max_epochs": max_epochs})
        result = train_llm(model, vocab, data, tables, llm, train, device, [10, 20], out_dir)
        return model.state_dict(), result.history

    reference, reference_history = trained(2, None)
    # stopped after epoch 1, then continued to 2
    trained(1, tmp_path / "a")
    resumed, history = trained(2, tmp_path / "a")
    # killed inside epoch 2: only a mid-epoch checkpoint survives
    trained(2, tmp_path / "b")
    folder = next((tmp_path / "b" / "checkpoints").iterdir())
    sorted(folder.glob("step-*.pt"))[-1].unlink()
    mid_epoch, mid_history = trained(2, tmp_path / "b")
    for state, hist in ((resumed, history), (mid_epoch, mid_history)):
        assert [h["epoch"] for h in hist] == [1, 2]
        assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in reference_history], rel=1e-6)
        for key, value in reference.items():
            assert torch.equal(value, state[key]), key


def test_gradient_accumulation_steps_the_optimizer_once_per_window(prepared, tmp_path):
    _, run_dir, data = prepared
    cfg = load_config(overrides=[*SETTINGS, "llm.max_epochs=1", "llm.samples_per_user=1", "llm.grad_accum=4"])
    model, vocab = fresh_model(cfg)
    train = TrainConfig(device="cpu", seed=3, progress=False)
    train_llm(model, vocab, data, tables_of(run_dir), cfg.llm, train, torch.device("cpu"), [20], tmp_path)
    steps = [p.name for p in (tmp_path / "checkpoints").glob("*/step-*.pt")]
    assert steps == [
        "step-00000002.pt"
    ]  # 96 samples = 6 micro-batches of 16: steps after the 4th and the 6th


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_a_gpu_with_bf16_autocast_resumes_and_scores(prepared, tmp_path):
    _, run_dir, data = prepared
    cfg = load_config(overrides=[*SETTINGS, "llm.max_epochs=2", "llm.grad_accum=2", "train.device=cuda"])
    train = TrainConfig(device="cuda", seed=3, progress=False)
    device = torch.device("cuda")
    tables = tables_of(run_dir)
    model, vocab = fresh_model(cfg)
    first = LlmConfig(**{**vars(cfg.llm), "max_epochs": 1})
    train_llm(model, vocab, data, tables, first, train, device, [10, 20], tmp_path)
    model, vocab = fresh_model(cfg)
    result = train_llm(model, vocab, data, tables, cfg.llm, train, device, [10, 20], tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert next(model.parameters()).device.type == "cuda"
    scorer = TokenRecScorer(model, tables["user_codes"], tables["item_codes"], tables["item_vectors"], 5)
    metrics = evaluate_valid_test(data, TokenRecRanker(scorer, data), [10, 20], 64)
    assert 0.0 <= metrics["test"]["HR@20"] <= 1.0

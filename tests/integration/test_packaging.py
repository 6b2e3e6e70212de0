"""The packaged TokenRec model (tokenrec/mlops/packaging.py) on real MLflow: register, promote, load, predict, R11.

A tiny but complete retrain is built per module: a published interactions snapshot with ID maps,
cluster-shaped GNN embeddings, trained tokenizers (train-tokenizer), a tiny random backbone with the ID tokens
and a projection (saved as train-llm saves them), and evaluation metrics. :func:`build_world` is shared with
test_batch_inference.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from tests.models.conftest import make_walks, write_snapshot
from tokenrec import schema
from tokenrec.config import Config, load_config
from tokenrec.data.id_maps import append_ids
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import InputError
from tokenrec.llm.backbone import add_id_tokens, tiny_backbone
from tokenrec.llm.scorer import TokenRecScorer
from tokenrec.mlops import packaging, registry
from tokenrec.models.llm4rec import LLM4Rec
from tokenrec.run_folder import RunFolder
from tokenrec.storage import atomic_write_json, publish_partition
from tokenrec.tasks import promote, register, train_tokenizer
from tokenrec.tasks.train_llm import save_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DS = "2026-11-27"
N_USERS, N_ITEMS, CLUSTERS, DIM, K = 48, 24, 4, 16, 10
SETTINGS = [
    "train.device=cpu",
    "train.progress=false",
    "tokenizer.codebook_size=8",
    "tokenizer.code_dim=8",
    "tokenizer.hidden_dim=16",
    "tokenizer.epochs=2",
    "llm.backbone=tiny-bert",
    "llm.history_len=5",
    "llm.proj_hidden=32",
    "llm.eval_batch_size=16",
    f"inference.topk={K}",
    "inference.user_batch_size=16",
]


@dataclass
class World:
    cfg: Config
    run_dir: Path
    data: InteractionData
    lake: schema.Lake


def user_id(idx: int) -> str:
    return f"user-{idx:04d}"


def item_id(idx: int) -> str:
    return f"item-{idx:04d}"


def id_rows(ids: list[str], start: int, ds: str) -> pa.Table:
    import datetime as dt

    return pa.table(
        {
            schema.RAW_ID: ids,
            schema.IDX: pa.array(np.arange(start, start + len(ids)), pa.int32()),
            schema.FIRST_SEEN: pa.array([dt.date.fromisoformat(ds)] * len(ids), pa.date32()),
        }
    )


def publish_snapshot(
    lake: schema.Lake, ds: str, data: InteractionData, users_before: int, items_before: int
) -> Path:
    """Append the ids new in ``data`` to the ID maps and publish ``data`` as the snapshot of ``ds``."""
    append_ids(lake.id_map(schema.USERS), id_rows([user_id(i) for i in range(users_before, data.n_users)],
                                                  users_before, ds), ds)  # fmt: skip
    append_ids(lake.id_map(schema.ITEMS), id_rows([item_id(i) for i in range(items_before, data.n_items)],
                                                  items_before, ds), ds)  # fmt: skip
    manifest = {"n_users": data.n_users, "n_items": data.n_items, "dataset": data.name}
    return publish_partition(lake.interactions(ds), lambda folder: write_snapshot(data, folder), manifest)


def build_world(root: Path, registered_model: str = "tokenrec") -> World:
    """Snapshot + ID maps for ``DS`` and a complete run folder with metrics (nothing registered yet)."""
    home = root / "home"
    cfg = load_config(
        overrides=[
            *SETTINGS,
            f"paths.home={home}",
            f"mlflow.tracking_uri=sqlite:///{home}/mlflow/mlflow.db",
            f"mlflow.registered_model={registered_model}",
        ]
    )
    lake = schema.Lake.at(cfg.paths.lake)
    data = make_walks(n_users=N_USERS, n_items=N_ITEMS, clusters=CLUSTERS, length=8)
    publish_snapshot(lake, DS, data, 0, 0)

    run_dir = Path(cfg.paths.runs) / f"synthetic-{DS}"
    write_run(cfg, lake.interactions(DS), run_dir, data)
    write_metrics(run_dir, 0.10, champion=None)
    return World(cfg, run_dir, data, lake)


def write_run(cfg: Config, snapshot: Path, run_dir: Path, data: InteractionData) -> Path:
    """A run folder for ``snapshot``: cluster-shaped GNN tables (user u and item ring u % CLUSTERS, as
    :func:`make_walks` draws them), trained tokenizers and an untrained tiny LLM4Rec saved as train-llm
    saves it."""
    (run_dir / "gnn").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(CLUSTERS, DIM, generator=g)
    ring = data.n_items // CLUSTERS
    items = centres[torch.arange(data.n_items) // ring] + 0.3 * torch.randn(data.n_items, DIM, generator=g)
    users = centres[torch.arange(data.n_users) % CLUSTERS] + 0.1 * torch.randn(data.n_users, DIM, generator=g)
    tables = {"user": users, "item": items, "user_ego": 0.5 * users, "item_ego": 0.5 * items}
    save_file(tables, run_dir / "gnn" / "embeddings.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_tokenizer.run(cfg, snapshot, run_dir)
        torch.manual_seed(0)
        backbone = tiny_backbone("tiny-bert", seed=0)
        vocab = add_id_tokens(backbone, 3, 8, seed=0)
        model = LLM4Rec(backbone, DIM, cfg.llm.proj_hidden)
        save_model(model, vocab, cfg, RunFolder(run_dir), "item", 1, 3, 8)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def write_metrics(run_dir: Path, ndcg: float, champion: tuple[int, float] | None = (1, 0.10)) -> None:
    """An ``eval/metrics.json`` as ``evaluate`` writes it: NDCG@20 = ``ndcg``, HR@20 = 2 ``ndcg``.

    ``champion``: ``(version, ndcg)`` of the champion scored on the same split (default: version 1, the
    model of :func:`build_world`, which scores 0.10), or None when there is no champion. The gate reads
    validation numbers only, so the champion entry holds just those.
    """
    valid = {"HR@20": 2 * ndcg, "NDCG@20": ndcg}
    document = {"tokenrec": {"valid": valid, "test": valid}, "dataset": "synthetic", "protocol": {}}
    if champion is None:
        document["champion"] = {"name": "tokenrec", "version": None, "note": "no champion"}
    else:
        version, score = champion
        document["champion"] = {"name": "tokenrec", "version": version,
                                 "valid": {"HR@20": 2 * score, "NDCG@20": score}}  # fmt: skip
    atomic_write_json(run_dir / "eval" / "metrics.json", document)


def all_sequences(data: InteractionData) -> list[np.ndarray]:
    return data.sequences_before(3)  # every split, time order


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = build_world(tmp_path_factory.mktemp("packaging"))
    summary = register.run(world.cfg, DS, world.run_dir)
    assert summary["version"] == 1
    assert promote.run(world.cfg, DS, None)["promoted"] is True
    return world


def test_register_logs_one_pyfunc_with_every_artifact_and_the_tokenizer_hash_tag(world: World):
    import mlflow

    target = registry.resolve_alias(world.cfg, registry.CHAMPION)
    manifest = json.loads((world.run_dir / "tokenizer" / "tokenizer.json").read_text())
    assert target.tags["tokenizer_hash"] == manifest["tokenizer_hash"]
    assert target.tags["metric.tokenrec.valid.NDCG_at_20"] == "0.1"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/tokenrec/{target.version}"))
    mlmodel = (local / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel  # from code, not pickled
    found = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    for name in ("gnn/embeddings.safetensors", "tokenizer/tokens.safetensors",
                 "tokenizer/user_tokenizer.safetensors", "llm/projection.safetensors",
                 "llm/backbone/model.safetensors", "llm/backbone/tokenizer.json", "id_maps/users.parquet",
                 "history/history.safetensors", "config.yaml", "bundle.json"):  # fmt: skip
        assert any(f.endswith(name) for f in found), name
    assert not any(f.endswith((".pkl", ".pt", ".bin")) for f in found)
    signature = mlflow.models.get_model_info(f"models:/tokenrec/{target.version}").signature
    assert [c.name for c in signature.inputs.inputs] == ["user_id", "k"]
    assert [c.name for c in signature.outputs.inputs] == ["user_id", "rank", "item_id", "score"]


@pytest.mark.slow
def test_a_fresh_process_loading_the_champion_predicts_the_in_process_top_k(world: World, tmp_path: Path):
    users = [0, 5, 17, 46]
    out = tmp_path / "predicted.json"
    script = textwrap.dedent(f"""
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/tokenrec@champion")
        ids = {[user_id(u) for u in users]!r}
        frame = model.predict(pd.DataFrame({{"user_id": ids, "k": [{K}, {K}, 3, {K}]}}))
        frame.to_json({str(out)!r}, orient="records")
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": world.cfg.mlflow.tracking_uri, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, env=env, timeout=300)
    predicted = json.loads(out.read_text())

    scorer = TokenRecScorer.from_run(world.run_dir, world.cfg)  # the run folder itself, no MLflow
    sequences = all_sequences(world.data)
    scores, ids = scorer.recommend(np.array(users), sequences, K, exclude=[sequences[u] for u in users])
    for row, (user, k) in enumerate(zip(users, [K, K, 3, K], strict=True)):
        got = [r for r in predicted if r["user_id"] == user_id(user)]
        assert [r["rank"] for r in got] == list(range(1, k + 1))
        assert [r["item_id"] for r in got] == [item_id(i) for i in ids[row, :k]]
        np.testing.assert_allclose([r["score"] for r in got], scores[row, :k], rtol=1e-5, atol=1e-6)
        assert not {item_id(i) for i in sequences[user]} & {r["item_id"] for r in got}


def test_unknown_users_are_refused_with_their_ids(world: World):
    import pandas as pd

    model = packaging.load_version(registry.resolve_alias(world.cfg, registry.CHAMPION))
    with pytest.raises(InputError, match="1 of 2 user ids are unknown.*nobody"):
        model.predict(None, pd.DataFrame({"user_id": [user_id(0), "nobody"]}))


def test_a_version_registered_with_another_tokenizer_hash_refuses_to_load(world: World):
    """R11: the registry tag and the bundled tokenizer must agree."""
    champion = registry.resolve_alias(world.cfg, registry.CHAMPION)
    source = registry.connect(world.cfg)[0].get_model_version("tokenrec", str(champion.version)).source
    version = registry.register(
        world.cfg, world.run_dir.name, source, {"tokenrec": {}}, tokenizer_hash="0" * 64
    )
    target = packaging.resolve_version(world.cfg, "tokenrec", version)
    with pytest.raises(packaging.ModelIntegrityError, match="drifted apart.*re-register"):
        packaging.load_version(target)
    untagged = target._replace(tags={})
    with pytest.raises(packaging.ModelIntegrityError, match="no tokenizer_hash tag"):
        packaging.load_version(untagged)


def test_a_bundle_whose_tokenizer_files_changed_refuses_to_load(world: World, tmp_path: Path):
    """R11: the bundled tokenizer files must hash to what was registered (no silent swap of tokens)."""
    import mlflow
    from safetensors.torch import save

    champion = registry.resolve_alias(world.cfg, registry.CHAMPION)
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/tokenrec/{champion.version}", dst_path=tmp_path)
    )
    tokens = next(local.rglob("tokens.safetensors"))
    codes = torch.zeros(N_USERS, 3, dtype=torch.int64), torch.zeros(N_ITEMS, 3, dtype=torch.int64)
    tokens.write_bytes(save({"user_codes": codes[0], "item_codes": codes[1]}))
    with pytest.raises(packaging.ModelIntegrityError, match="tokens.safetensors: SHA-256"):
        mlflow.pyfunc.load_model(str(local))


def test_the_stored_model_code_is_the_thin_installed_entry_and_is_recorded_with_the_version(world: World):
    """Loading runs MODEL_CODE, which only imports the installed TokenRecModel; its hash is in MLmodel."""
    import ast
    import importlib.metadata

    import mlflow

    imported = set()
    for node in ast.walk(ast.parse(packaging.MODEL_CODE)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(f"{node.module}:{','.join(alias.name for alias in node.names)}")
    assert imported == {"mlflow", "tokenrec.mlops.packaging:TokenRecModel"}

    champion = registry.resolve_alias(world.cfg, registry.CHAMPION)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/tokenrec/{champion.version}"))
    meta = mlflow.models.Model.load(str(local / "MLmodel"))
    assert (local / "tokenrec_model.py").read_text() == packaging.MODEL_CODE
    assert meta.metadata["model_code_sha256"] == packaging.model_code_sha256()
    assert meta.metadata["tokenrec_version"] == importlib.metadata.version("tokenrec")
    assert packaging.verify_model_code(local, "champion") == packaging.model_code_sha256()


def _tampered_code(marker: Path) -> str:
    """Model code that would load the real model, after writing ``marker``: it must never run."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n" + packaging.MODEL_CODE


def _edit_mlmodel(local: Path, edit) -> None:
    import mlflow

    meta = mlflow.models.Model.load(str(local / "MLmodel"))
    edit(meta)
    meta.save(str(local / "MLmodel"))


def _register_copy(world: World, folder: Path, edit=None) -> registry.AliasTarget:
    """A new version holding a copy of the champion's files, changed by ``edit(copy)`` before registering."""
    import mlflow

    champion = registry.resolve_alias(world.cfg, registry.CHAMPION)
    folder.mkdir(parents=True)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/tokenrec/{champion.version}", dst_path=folder))
    if edit is not None:
        edit(local)
    version = registry.register(world.cfg, world.run_dir.name, local, {"tokenrec": {}},
                                tokenizer_hash=champion.tags["tokenizer_hash"])  # fmt: skip
    return packaging.resolve_version(world.cfg, "tokenrec", version)


def test_model_code_edited_in_the_artifact_store_is_refused_before_it_runs(world: World, tmp_path: Path):
    import mlflow

    target = _register_copy(world, tmp_path / "copy")
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/tokenrec/{target.version}"))
    assert stored.is_relative_to(Path(world.cfg.paths.home))  # the artifact store itself, not a copy
    marker = tmp_path / "model-code-ran"
    (stored / "tokenrec_model.py").write_text(_tampered_code(marker))

    with pytest.raises(packaging.ModelCodeError) as refused:
        packaging.load_version(target)
    message = str(refused.value)
    assert f"tokenrec version {target.version} (models:/tokenrec/{target.version})" in message
    assert "the stored file was changed afterwards" in message
    assert packaging.model_code_sha256()[:12] in message
    assert "Re-register the retrain with the installed tokenrec" in message
    assert "install the tokenrec version the model was built with" in message
    assert not marker.exists()

    mlflow.pyfunc.load_model(str(stored))  # what load_version refused to do: the tampered code runs
    assert marker.read_text() == "ran"


def _rerecorded(marker: Path):
    """Another model code, with its own hash recorded: as if logged by another tokenrec."""

    def edit(local: Path) -> None:
        code = _tampered_code(marker)
        (local / "tokenrec_model.py").write_text(code)
        digest = hashlib.sha256(code.encode()).hexdigest()

        def record(meta) -> None:
            meta.metadata.update(model_code_sha256=digest, tokenrec_version="0.0.9")

        _edit_mlmodel(local, record)

    return edit


def _unrecorded(marker: Path):
    """No recorded hash (a model logged before the check), and changed code."""

    def edit(local: Path) -> None:
        (local / "tokenrec_model.py").write_text(_tampered_code(marker))
        _edit_mlmodel(local, lambda meta: meta.metadata.pop("model_code_sha256"))

    return edit


def _with_code_paths(marker: Path):
    """The model code untouched, plus logged code_paths that would shadow the installed tokenrec."""

    def edit(local: Path) -> None:
        package = local / "code" / "tokenrec"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")

        def point(meta) -> None:
            meta.flavors["python_function"]["code"] = "code"

        _edit_mlmodel(local, point)

    return edit


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_rerecorded, r"logged by tokenrec 0\.0\.9\) differs from the installed tokenrec .*'s MODEL_CODE"),
        (_unrecorded, "records no model_code_sha256"),
        (_with_code_paths, r"carries code_paths \(code/: \['tokenrec/__init__\.py'\]"),
    ],
    ids=["other-code-recorded", "no-recorded-hash", "code-paths"],
)
def test_a_version_registered_with_other_model_code_is_refused_before_it_runs(
    world: World, tmp_path: Path, tamper, expected: str
):
    marker = tmp_path / "model-code-ran"
    target = _register_copy(world, tmp_path / "copy", tamper(marker))
    with pytest.raises(packaging.ModelCodeError, match=expected) as refused:
        packaging.load_version(target)
    assert f"version {target.version}" in str(refused.value) and "refusing to load it" in str(refused.value)
    assert not marker.exists()


def test_the_bundle_opens_wherever_mlflow_put_its_folders(world: World, tmp_path: Path):
    import mlflow
    import pandas as pd

    champion = registry.resolve_alias(world.cfg, registry.CHAMPION)
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/tokenrec/{champion.version}", dst_path=tmp_path)
    )
    paths = {key: next(local.rglob(key)) for key in ("gnn", "tokenizer", "llm", "id_maps", "history")}
    paths |= {"config": next(local.rglob("config.yaml")), "bundle": next(local.rglob("bundle.json"))}
    for key in ("gnn", "llm"):  # not side by side under their own names any more
        paths[key] = paths[key].rename(tmp_path / f"renamed-{key}")
    moved = packaging.TokenRecModel().open(packaging.ModelBundle.open({k: str(v) for k, v in paths.items()}))
    frame = pd.DataFrame({"user_id": [user_id(3), user_id(40)]})
    expected = packaging.load_version(champion).predict(None, frame)
    pd.testing.assert_frame_equal(moved.predict(None, frame), expected)


def test_promote_rejects_a_worse_challenger_as_a_normal_outcome(world: World, tmp_path: Path):
    worse = world.cfg
    run_dir = tmp_path / world.run_dir.name  # same retrain id: evaluated on the same snapshot
    shutil.copytree(world.run_dir, run_dir)
    write_metrics(run_dir, 0.05)
    version = register.run(worse, DS, run_dir)["version"]
    outcome = promote.run(worse, DS, None)
    assert outcome["promoted"] is False and outcome["version"] == version
    assert outcome["champion"] == 1 and "NDCG@20" in outcome["reason"]
    assert registry.resolve_alias(worse, registry.CHAMPION).version == 1

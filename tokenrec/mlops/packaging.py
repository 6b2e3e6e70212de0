"""One MLflow pyfunc model per retrain: all that inference needs, loadable by ``models:/tokenrec@champion``.

TokenRec (Qu et al., arXiv 2406.10450) serves with four trained parts: the LightGCN tables (the retrieval
targets, and the inputs that tokenize users and items new since training), the user and item MQ-Tokenizers
with their token tables, the fine-tuned backbone with its text tokenizer, and the projection. Scope: bundling
a finished run folder into one MLflow model, logging it, and loading a registered version with its checks.

The model is logged *from code* (a three-line stub that calls ``mlflow.models.set_model(TokenRecModel())``;
nothing is pickled) with these artifacts, weights as safetensors:

    gnn/        embeddings.safetensors (user, item, user_ego, item_ego)
    tokenizer/  user_tokenizer.safetensors, item_tokenizer.safetensors, tokens.safetensors, tokenizer.json
    llm/        backbone/ (weights + text tokenizer with the ID tokens), projection.safetensors, llm.json
    id_maps/    users.parquet, items.parquet: raw id <-> index as the model knows them
    history/    history.safetensors: every user's interactions at training time (CSR, time order)
    config      the resolved config (config.yaml)
    bundle      bundle.json: tokenizer hash, sizes, retrieval settings, top-K, training snapshot

Input: a DataFrame with a ``user_id`` string column and an optional ``k`` integer column; output: one row per
recommendation, ``user_id, rank (1..k), item_id, score``. The packaged model serves the users it was trained
on from their training-time history; the nightly job uses the same engine on the current snapshot, with
fold-in of new users and items (:mod:`tokenrec.serving.recommender`).

Tokenizer and model cannot drift apart (RELIABILITY.md R11): loading recomputes the SHA-256 of the bundled
tokenizer files and refuses a bundle whose hash differs from ``bundle.json``; :func:`load_version` also
refuses a version whose registry tag ``tokenizer_hash`` differs from the bundled one.

Loading a pyfunc runs the code stored with it (``mlflow.pyfunc.load_model`` executes the models-from-code file
and puts logged ``code_paths`` first on ``sys.path``). :func:`log_model` records the SHA-256 of the stored file
(``model_code_sha256``) and the installed tokenrec version (``tokenrec_version``) in the MLmodel metadata;
before anything runs, :func:`load_version` downloads the model, reads MLmodel as data, and
:func:`verify_model_code` refuses (:class:`ModelCodeError`) a model that is not logged from code, carries
``code_paths`` or records no hash, or whose stored file or recorded hash differs from the installed
:data:`MODEL_CODE`. So the only code that loading runs is the three-line stub importing the installed
:class:`TokenRecModel` (docs/RUNBOOK.md, "Loading models runs code").
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from tokenrec import schema
from tokenrec.artifacts import load_tokenizer, tokenizer_hash
from tokenrec.config import Config, RetrievalConfig, load_config, save_config
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import ConfigError, InputError, TokenrecError
from tokenrec.mlops import registry
from tokenrec.run_folder import ENTITIES, PACKAGED_STAGES, RunFolder
from tokenrec.storage import atomic_write_bytes, atomic_write_json, read_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is first imported: no network

import mlflow  # noqa: E402

log = logging.getLogger(__name__)

ARTIFACTS = (*PACKAGED_STAGES, "id_maps", "history", "config", "bundle")
BUNDLE_FILE, CONFIG_FILE, HISTORY_FILE = "bundle.json", "config.yaml", "history.safetensors"
BUNDLE_FORMAT = 1
MODEL_CODE = '''"""MLflow models-from-code entry point: the pyfunc is tokenrec.mlops.packaging.TokenRecModel."""
import mlflow

from tokenrec.mlops.packaging import TokenRecModel

mlflow.models.set_model(TokenRecModel())
'''
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "faiss-cpu", "numpy", "scipy", "pandas",
                "pyarrow", "pyyaml", "mlflow")  # fmt: skip


class ModelIntegrityError(TokenrecError):
    """A packaged model is incomplete, or its tokenizer differs from the one it was registered with (R11)."""


class ModelCodeError(ModelIntegrityError):
    """A registered model's stored code is not the installed package's :data:`MODEL_CODE` (or is unrecorded)."""


# ------------------------------------------------------------------------------------------------ building


def build_bundle(cfg: Config, run_dir: Path, snapshot: Path, out: Path) -> dict[str, Any]:
    """Copy what inference needs from ``run_dir`` into ``out`` (one folder per artifact); return bundle.json.

    Args:
        cfg: the resolved configuration, saved with the model (its retrieval settings and top-K become the
            model's).
        run_dir: a finished run folder (``gnn/``, ``tokenizer/``, ``llm/``).
        snapshot: the interactions snapshot the run was trained on (its histories are bundled).
        out: an empty or missing folder.

    Raises:
        InputError: a file of the run is missing, or the run does not match the snapshot or the ID maps.
        ModelIntegrityError: the tokenizer files differ from the hashes recorded in ``tokenizer.json``.
    """
    run, out = RunFolder(run_dir), Path(out)
    bundled = RunFolder(out)  # the bundle holds a run-folder view of the files inference needs
    for source in run.packaged():
        if not source.exists():
            raise InputError(source, "missing from the run folder", "Finish the retrain (train-llm) first.")
        target = out / source.relative_to(run.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    tokenizer_hash = verify_tokenizer(bundled)
    llm = read_json(bundled.llm_manifest)
    tokens = _load_tensors(bundled.tokens)
    n_users, n_items = len(tokens["user_codes"]), len(tokens["item_codes"])

    data = InteractionData.load(snapshot)
    if (data.n_users, data.n_items) != (n_users, n_items):
        raise InputError(
            snapshot,
            f"{data.n_users} users and {data.n_items} items, but the run's token table has {n_users} and "
            f"{n_items}",
            "Register the run with the --ds of the snapshot it was trained on.",
        )
    lake = schema.Lake.at(cfg.paths.lake)
    (out / "id_maps").mkdir(parents=True, exist_ok=True)
    for kind, count in ((schema.USERS, n_users), (schema.ITEMS, n_items)):
        table = read_id_map(lake.id_map(kind))
        if table.num_rows < count:
            raise InputError(lake.id_map(kind), f"{table.num_rows} ids but the model knows {count}",
                             "Run the ETL for the training date first; ID maps only grow.")  # fmt: skip
        pq.write_table(table.slice(0, count), out / "id_maps" / f"{kind}.parquet")
    counts = np.bincount(data.users, minlength=n_users)
    history = {"indptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), "items": data.items}
    atomic_write_bytes(out / "history" / HISTORY_FILE, save_arrays(history))
    save_config(cfg, out, CONFIG_FILE)
    manifest = {
        "format": BUNDLE_FORMAT,
        "tokenizer_hash": tokenizer_hash,
        "n_users": n_users,
        "n_items": n_items,
        "levels": llm["levels"],
        "codebook_size": llm["codebook_size"],
        "item_vectors": llm["item_vectors"],
        "tokenizer_input": read_json(bundled.tokenizer_manifest).get("embeddings", "propagated"),
        "retrieval": dataclasses.asdict(cfg.retrieval),
        "topk": cfg.inference.topk,
        "snapshot": str(snapshot),
        "dataset": data.name,
        "config_hash": cfg.hash(),
    }
    atomic_write_json(out / BUNDLE_FILE, manifest)
    return manifest


def verify_tokenizer(run: RunFolder) -> str:
    """The tokenizer hash of the files of ``run``'s ``tokenizer/``, recomputed; it must equal ``tokenizer.json``'s.

    Raises:
        ModelIntegrityError: a file's SHA-256 or the resulting hash differs from the recorded one.
    """
    folder = run.tokenizer
    manifest = read_json(run.tokenizer_manifest)
    hashes = {}
    for name, recorded in manifest["sha256"].items():
        if name.endswith(".safetensors"):
            hashes[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            if hashes[name] != recorded:
                raise ModelIntegrityError(
                    f"{folder / name}: SHA-256 {hashes[name][:12]}... differs from {recorded[:12]}... "
                    "recorded in tokenizer.json; the tokenizer files were changed or mixed between runs. "
                    "Re-register the run."
                )
    found = tokenizer_hash(hashes)
    if found != manifest["tokenizer_hash"]:
        raise ModelIntegrityError(
            f"{folder}: tokenizer hash {found[:12]}... differs from {manifest['tokenizer_hash'][:12]}... in "
            "tokenizer.json. Re-register the run."
        )
    return found


def signature() -> Any:
    """Input ``user_id`` (string) and optional ``k`` (long); output ``user_id, rank, item_id, score``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", schema.USER_ID), ColSpec("long", "k", required=False)])
    outputs = Schema([ColSpec("string", schema.USER_ID), ColSpec("integer", schema.RANK),
                      ColSpec("string", schema.ITEM_ID), ColSpec("float", schema.SCORE)])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """The serving environment, pinned to the versions installed here (tokenrec comes with the image)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(bundle_dir: Path, requirements: list[str] | None = None, name: str = "model") -> str:
    """Log the bundle in ``bundle_dir`` as a pyfunc into the active MLflow run; return the model URI."""
    bundle_dir = Path(bundle_dir)
    manifest = read_json(bundle_dir / BUNDLE_FILE)
    users = (
        pq.read_table(bundle_dir / "id_maps" / f"{schema.USERS}.parquet").column(schema.RAW_ID).to_pylist()
    )
    example = pd.DataFrame({schema.USER_ID: users[:2]})
    with tempfile.TemporaryDirectory(prefix="tokenrec-model-") as tmp:
        code = Path(tmp) / "tokenrec_model.py"
        code.write_text(MODEL_CODE)
        artifacts = {key: str(bundle_dir / key) for key in (*PACKAGED_STAGES, "id_maps", "history")}
        artifacts.update({"config": str(bundle_dir / CONFIG_FILE), "bundle": str(bundle_dir / BUNDLE_FILE)})
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts=artifacts,
            signature=signature(),
            input_example=example,
            pip_requirements=requirements if requirements is not None else pip_requirements(),
            metadata={
                "tokenizer_hash": manifest["tokenizer_hash"],
                "bundle_format": BUNDLE_FORMAT,
                "model_code_sha256": hashlib.sha256(code.read_bytes()).hexdigest(),  # read at load as data
                "tokenrec_version": tokenrec_version(),
            },
        )
    return info.model_uri


# ------------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass
class ModelBundle:
    """A loaded model's artifacts: a run-folder view (``gnn/``, ``tokenizer/``, ``llm/``) plus the rest."""

    root: Path
    paths: dict[str, Path]
    manifest: dict[str, Any]
    config: Config

    @classmethod
    def open(cls, artifacts: Mapping[str, str]) -> ModelBundle:
        """Check and open the artifacts of a pyfunc (``context.artifacts``) or of a bundle folder.

        Raises:
            ModelIntegrityError: an artifact is missing, or the tokenizer differs from the one in bundle.json.
        """
        missing = [key for key in ARTIFACTS if key not in artifacts]
        if missing:
            raise ModelIntegrityError(f"packaged model lacks the artifacts {missing}; re-register the run")
        paths = {key: Path(artifacts[key]) for key in ARTIFACTS}
        root = paths["gnn"].parent
        # MLflow keeps folder names unless they collide; otherwise link them side by side as a run folder
        if any(paths[key] != root / key for key in PACKAGED_STAGES):
            root = Path(tempfile.mkdtemp(prefix="tokenrec-bundle-"))
            for key in PACKAGED_STAGES:
                (root / key).symlink_to(paths[key].resolve(), target_is_directory=True)
        manifest = read_json(paths["bundle"])
        found = verify_tokenizer(RunFolder(root))
        if found != manifest["tokenizer_hash"]:
            raise ModelIntegrityError(
                f"bundled tokenizer hashes to {found[:12]}... but bundle.json records "
                f"{manifest['tokenizer_hash'][:12]}...; the model and its tokenizer drifted apart. "
                "Re-register the run."
            )
        try:
            config = load_config(paths["config"])
        except ConfigError as exc:  # saved by another tokenrec version: serve with today's defaults
            log.warning("bundled config.yaml does not load (%s); using the default settings", exc)
            config = Config()
        # bundles registered before retrieval.topk was removed (it was never read) still carry it
        retrieval = {k: v for k, v in manifest["retrieval"].items() if k != "topk"}
        config.retrieval = RetrievalConfig(**retrieval)
        return cls(root, paths, manifest, config)

    @property
    def tokenizer_hash(self) -> str:
        return self.manifest["tokenizer_hash"]

    def ids(self, kind: str) -> np.ndarray:
        """Raw ids by index of ``users`` or ``items`` as the model knows them (object array of str)."""
        table = pq.read_table(self.paths["id_maps"] / f"{kind}.parquet")
        return np.asarray(table.column(schema.RAW_ID).to_pylist(), dtype=object)

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Training-time interactions: ``indptr`` ``(n_users + 1,)`` and ``items`` in time order per user."""
        arrays = _load_tensors(self.paths["history"] / HISTORY_FILE)
        return arrays["indptr"], arrays["items"]

    def embeddings(self) -> dict[str, np.ndarray]:
        """The GNN tables ``user``, ``item``, ``user_ego``, ``item_ego`` as float32 arrays."""
        return {k: v.astype(np.float32) for k, v in _load_tensors(RunFolder(self.root).embeddings).items()}

    def tokenizers(self) -> dict[str, Any]:
        return {kind: load_tokenizer(RunFolder(self.root), kind) for kind in ENTITIES}

    def scorer(self, runtime: Config | None = None) -> Any:
        """The trained model on the device of ``runtime`` (default: the bundled config, device ``auto``).

        Device, batch size, precision and progress bars come from ``runtime``; retrieval settings are the
        model's own.
        """
        from tokenrec.llm.scorer import TokenRecScorer

        if runtime is None:
            runtime = dataclasses.replace(
                self.config, train=dataclasses.replace(self.config.train, device="auto", progress=False)
            )
        cfg = dataclasses.replace(runtime, retrieval=self.config.retrieval)
        return TokenRecScorer.from_run(self.root, cfg)


class TokenRecModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: ``user_id`` (+ optional ``k``) -> ``user_id, rank, item_id, score``, top-k per user."""

    def load_context(self, context: Any) -> None:
        self.open(ModelBundle.open(context.artifacts))

    def open(self, bundle: ModelBundle, runtime: Config | None = None) -> TokenRecModel:
        """Load the model of ``bundle`` (also for use without MLflow, e.g. in tests)."""
        from tokenrec.serving.recommender import CsrSequences, Recommender

        self.bundle = bundle
        self.scorer = bundle.scorer(runtime)
        self.recommender = Recommender.trained(self.scorer)
        self.sequences = CsrSequences(*bundle.history())
        self.user_ids, self.item_ids = bundle.ids(schema.USERS), bundle.ids(schema.ITEMS)
        self._user_index = {raw: idx for idx, raw in enumerate(self.user_ids)}
        return self

    @property
    def tokenizer_hash(self) -> str:
        return self.bundle.tokenizer_hash

    def configure(self, runtime: Config) -> TokenRecModel:
        """Apply the running job's device, batch size, precision and progress bars to the loaded model."""
        from tokenrec.training.device import autocast_dtype, pick_device

        scorer = self.scorer
        device = pick_device(runtime.train.device)
        if device != scorer.device:
            scorer.model.to(device)
            scorer.device = device
        scorer.batch_size = runtime.llm.eval_batch_size
        scorer.amp_dtype = autocast_dtype(device, runtime.llm.precision)
        scorer.progress = runtime.train.progress
        return self

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Top-k rows of every ``user_id`` of ``model_input`` (a DataFrame; ``k`` column optional)."""
        frame = pd.DataFrame(model_input)
        raw = frame[schema.USER_ID].astype(str).tolist()
        unknown = [u for u in raw if u not in self._user_index]
        if unknown:
            raise InputError(
                "model input",
                f"{len(unknown)} of {len(raw)} user ids are unknown to this model, e.g. {unknown[:5]}",
                "The packaged model serves users known at training; the nightly batch_inference folds new "
                "ones in.",
                field=schema.USER_ID,
            )
        default_k = int(self.bundle.manifest["topk"])
        ks = (
            frame["k"].fillna(default_k).astype(int).to_numpy()
            if "k" in frame
            else np.full(len(raw), default_k)
        )
        if len(ks) and ks.min() < 1:
            raise InputError("model input", f"k must be >= 1, got {int(ks.min())}", "Pass k >= 1.", field="k")
        users = np.array([self._user_index[u] for u in raw], dtype=np.int64)
        if not len(users):
            return pd.DataFrame({c: [] for c in (schema.USER_ID, schema.RANK, schema.ITEM_ID, schema.SCORE)})
        scores, items = self.recommender.recommend(users, self.sequences, int(ks.max()))
        keep = (items >= 0) & (np.arange(items.shape[1])[None, :] < ks[:, None])  # (U, k)
        rows, ranks = np.nonzero(keep)
        return pd.DataFrame(
            {
                schema.USER_ID: np.asarray(raw, dtype=object)[rows],
                schema.RANK: (ranks + 1).astype(np.int32),
                schema.ITEM_ID: self.item_ids[items[keep]],
                schema.SCORE: scores[keep].astype(np.float32),
            }
        )


def resolve_version(cfg: Config, name: str, version: int) -> registry.AliasTarget:
    """``(name, version, run_id, tags)`` of a registered version (a rerun reusing its recorded version)."""
    client, _ = registry.connect(cfg)
    try:
        found = client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise registry.RegistryError(
            f"registered model {name!r} has no version {version} in {registry.tracking_uri(cfg)}"
        ) from exc
    return registry.AliasTarget(name, int(found.version), found.run_id, dict(found.tags))


def load_version(target: registry.AliasTarget) -> TokenRecModel:
    """Load version ``target`` (resolved once by the caller) and check its tokenizer against the registry tag.

    Raises:
        ModelCodeError: the code stored with the version is not the installed :data:`MODEL_CODE`
            (:func:`verify_model_code`, checked before any of it runs).
        ModelIntegrityError: the version has no ``tokenizer_hash`` tag, or it differs from the bundled one.
    """
    registered = target.tags.get("tokenizer_hash")
    if not registered:
        raise ModelIntegrityError(
            f"{target.name} version {target.version} has no tokenizer_hash tag; register it with "
            "`tokenrec register`"
        )
    uri = f"models:/{target.name}/{target.version}"
    local = Path(mlflow.artifacts.download_artifacts(uri))  # files only: nothing of the model runs yet
    verify_model_code(local, f"{target.name} version {target.version} ({uri})")
    model = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()  # the files just checked
    if model.tokenizer_hash != registered:
        raise ModelIntegrityError(
            f"{uri}: its bundled tokenizer hashes to {model.tokenizer_hash[:12]}... but the version was "
            f"registered with tokenizer_hash {registered[:12]}...; the tokenizer and the model drifted "
            "apart. Refusing to serve it: re-register the run (`tokenrec register`) and promote the new "
            "version."
        )
    log.info("loaded %s (tokenizer %s...)", uri, registered[:12])
    return model


CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # the loader_module of a pyfunc logged from code


def model_code_sha256() -> str:
    """SHA-256 of the installed :data:`MODEL_CODE`, the only model code :func:`load_version` lets run."""
    return hashlib.sha256(MODEL_CODE.encode()).hexdigest()


def tokenrec_version() -> str:
    """The installed tokenrec distribution's version (``unknown`` when run from a source tree only)."""
    try:
        return importlib.metadata.version("tokenrec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def verify_model_code(model_dir: Path, what: str) -> str:
    """Check the code that loading the MLflow model in ``model_dir`` would run, without running any of it.

    Reads ``MLmodel`` as YAML and hashes files; returns the model code's SHA-256. ``what`` names the model in
    the message (name, version, URI).

    Raises:
        ModelCodeError: the model is not logged from code by :mod:`mlflow.pyfunc`, carries ``code_paths``
            (the installed package logs none), has no ``model_code_sha256`` in its metadata (logged by a
            tokenrec without this check), or its stored code file or recorded hash differs from the
            installed :data:`MODEL_CODE`.
    """
    from mlflow.models import Model

    model_dir = Path(model_dir)
    meta = Model.load(str(model_dir / "MLmodel"))
    metadata = meta.metadata or {}
    built_with = metadata.get("tokenrec_version", "unknown")
    installed = model_code_sha256()
    fix = (
        f"Re-register the retrain with the installed tokenrec {tokenrec_version()} (`tokenrec register --ds D "
        f"--run-id R`, then promote the new version), or install the tokenrec version the model was built "
        f"with ({built_with}); see docs/RUNBOOK.md, 'Loading models runs code'"
    )

    def refuse(problem: str) -> ModelCodeError:
        return ModelCodeError(
            f"{what}: {problem}; refusing to load it, since loading a pyfunc runs the code stored with it. "
            f"{fix}."
        )

    conf = meta.flavors.get("python_function") or {}
    if conf.get("loader_module") != CODE_LOADER or "model_code_path" not in conf:
        raise refuse(f"not a pyfunc logged from code (loader_module {conf.get('loader_module')!r})")
    if conf.get("code"):
        folder = model_dir / conf["code"]
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        raise refuse(
            f"it carries code_paths ({conf['code']}/: {files[:5]}, SHA-256 {_tree_sha256(folder)[:12]}...) that "
            "loading would put ahead of the installed tokenrec on sys.path; the installed package logs none"
        )
    recorded = metadata.get("model_code_sha256")
    if not recorded:
        raise refuse(
            f"its MLmodel metadata records no model_code_sha256 (logged by tokenrec {built_with}, before "
            f"model code was checked); installed MODEL_CODE SHA-256 {installed[:12]}..."
        )
    folder = model_dir / conf["data"] if conf.get("data") else model_dir  # as mlflow.pyfunc.load_model
    code_file = folder / os.path.basename(conf["model_code_path"])
    stored = hashlib.sha256(code_file.read_bytes()).hexdigest() if code_file.is_file() else "missing"
    if stored != recorded:
        raise refuse(
            f"its stored model code {code_file.name} hashes to {stored[:12]}..., not to the "
            f"{recorded[:12]}... recorded when it was logged (the stored file was changed afterwards); "
            f"installed MODEL_CODE SHA-256 {installed[:12]}..."
        )
    if stored != installed:
        raise refuse(
            f"its stored model code {code_file.name} (SHA-256 {stored[:12]}..., logged by tokenrec {built_with}) "
            f"differs from the installed tokenrec {tokenrec_version()}'s MODEL_CODE (SHA-256 {installed[:12]}...)"
        )
    return stored


def _tree_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    return load_arrays(Path(path).read_bytes())

"""Readers of a run folder's trained artifacts: GNN tables, tokenizers and token tables, each checked.

The stages that train on an earlier stage's output (train-tokenizer, train-llm, evaluate), the scorer, the
packaged model and the benchmarks read the run folder (:mod:`tokenrec.run_folder`) through these functions,
so a missing, damaged or mismatched file fails in one way: an :class:`~tokenrec.errors.InputError` that names
the file and the stage to rerun.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load
from torch import Tensor

from tokenrec.config import TokenizerConfig
from tokenrec.errors import InputError
from tokenrec.models.quantizer import Tokenizer
from tokenrec.models.tokenizers import build_tokenizer
from tokenrec.run_folder import ENTITIES, GNN_TABLES, RunFolder
from tokenrec.storage import read_json


def load_embeddings(run: RunFolder, names: Sequence[str] = GNN_TABLES) -> dict[str, Tensor]:
    """The tables ``names`` of ``gnn/embeddings.safetensors``, float32, each a non-empty finite ``(n, d)``.

    Raises:
        InputError: the file is missing or unreadable, a tensor is absent, not 2-D, or not finite.
    """
    path = run.embeddings
    if not path.is_file():
        raise InputError(path, "GNN embeddings not found", "Run `tokenrec train-gnn` for this run first.")
    try:
        tensors = load(path.read_bytes())
    except SafetensorError as exc:
        raise InputError(
            path, f"cannot read the GNN embeddings ({exc})", "Rerun `tokenrec train-gnn`."
        ) from exc
    missing = [name for name in names if name not in tensors]
    if missing:
        raise InputError(
            path,
            f"tensors {missing} are missing; present: {', '.join(sorted(tensors))}",
            "Rerun `tokenrec train-gnn`, or set gnn.output to match the file.",
            field=missing[0],
        )
    found = {}
    for name in names:
        value = tensors[name]
        if value.ndim != 2 or value.shape[0] == 0:
            raise InputError(
                path, f"{name} must be a non-empty (n, d) matrix, got {tuple(value.shape)}",
                "Rerun `tokenrec train-gnn`.", field=name,
            )  # fmt: skip
        bad = int((~torch.isfinite(value)).any(dim=1).sum())
        if bad:
            raise InputError(
                path, f"{name} has {bad} rows with NaN or infinite values",
                "The GNN training diverged; rerun `tokenrec train-gnn` (lower gnn.lr).", field=name,
            )  # fmt: skip
        found[name] = value.float()
    return found


def tokenizer_hash(hashes: dict[str, str]) -> str:
    """One SHA-256 naming both tokenizers and the token table (what a model built on them records).

    Args:
        hashes: SHA-256 by file name of a ``tokenizer/`` folder (``tokenizer.json``'s ``sha256``); the
            ``.safetensors`` files count.
    """
    parts = [f"{name}={hashes[name]}" for name in sorted(hashes) if name.endswith(".safetensors")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def load_tokenizer(run: RunFolder, entity: str) -> Tokenizer:
    """Rebuild the trained ``entity`` (``user`` or ``item``) tokenizer of ``run``, in eval mode.

    Raises:
        InputError: the tokenizer folder is incomplete, or the weights' SHA-256 differs from the one in
            ``tokenizer.json``.
    """
    manifest_path = run.tokenizer_manifest
    if not manifest_path.is_file():
        raise InputError(manifest_path, "no complete tokenizer here", "Run `tokenrec train-tokenizer` first.")
    manifest = read_json(manifest_path)
    if entity not in manifest["entities"]:
        raise InputError(manifest_path, f"no tokenizer for {entity!r}", f"Use one of {', '.join(ENTITIES)}.")
    spec = manifest["entities"][entity]
    weights_path = run.tokenizer / spec["weights"]
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"][spec["weights"]]:
        raise InputError(
            weights_path,
            f"weights differ from those recorded in {manifest_path.name}",
            "Do not mix files of different runs; rerun `tokenrec train-tokenizer`.",
        )
    model = build_tokenizer(TokenizerConfig(**manifest["tokenizer"]), spec["input_dim"])
    model.load_state_dict(load(blob))
    return model.eval()


def load_run_tables(run: RunFolder, item_vectors: str = "item") -> dict[str, np.ndarray]:
    """``user_codes`` ``(n_users, K)``, ``item_codes`` ``(n_items, K)`` and ``item_vectors`` ``(n_items, d)``.

    Args:
        run: the run folder (``tokenizer/tokens.safetensors``, ``gnn/embeddings.safetensors``).
        item_vectors: the GNN tensor to retrieve against, ``item`` (propagated) or ``item_ego``.

    Raises:
        InputError: a file is missing or the tables disagree on the number of items.
    """
    path = run.tokens
    if not path.is_file():
        raise InputError(
            path, "ID token table not found", "Run `tokenrec train-tokenizer` for this run first."
        )
    tokens = load(path.read_bytes())
    vectors = load_embeddings(run, [item_vectors])[item_vectors]
    tables = {
        "user_codes": tokens["user_codes"].numpy(),
        "item_codes": tokens["item_codes"].numpy(),
        "item_vectors": vectors.numpy(),
    }
    if len(tables["item_codes"]) != len(tables["item_vectors"]):
        raise InputError(
            path,
            f"{len(tables['item_codes'])} item token rows but {len(tables['item_vectors'])} GNN item vectors",
            "The tokenizer and the GNN come from different runs; rerun `tokenrec train-tokenizer`.",
        )
    return tables

"""Stage ``train-tokenizer``: GNN embeddings -> user and item ID tokenizers and the token table.

Reads ``run_dir/gnn/embeddings.safetensors`` (``user``/``item`` propagated, or ``user_ego``/``item_ego`` when
``gnn.output`` is ``ego``), trains one tokenizer for users and one for items (``tokenizer.kind``, PAPER.md
section 2) and writes into ``run_dir/tokenizer/``:

- ``user_tokenizer.safetensors``, ``item_tokenizer.safetensors``: weights;
- ``tokens.safetensors``: int64 ``user_codes`` (n_users, K) and ``item_codes`` (n_items, K);
- ``stats.json``: per entity kind, codebook usage and perplexity per level, reconstruction error, collisions;
- ``history.json``: per entity kind, one record per epoch (losses, usage, perplexity, re-seeded codes);
- ``user_codebook_usage.png``, ``item_codebook_usage.png``: rank-frequency of the codes of every level;
- ``config.yaml``; and, last, ``tokenizer.json``: what rebuilds the modules (:func:`load_tokenizer`), the
  SHA-256 of every file above and ``tokenizer_hash`` (weights + token table), so that a later stage can
  refuse a tokenizer that drifted from its model.

Checkpoints go to ``run_dir/tokenizer/checkpoints/{user,item}/``; a rerun resumes from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save
from torch import Tensor

from tokenrec.config import Config, TokenizerConfig, save_config
from tokenrec.errors import InputError
from tokenrec.models.quantizer import Tokenizer, build_tokenizer, disambiguate
from tokenrec.storage import atomic_write_bytes, atomic_write_json, read_json
from tokenrec.training.tokenizer import TrainedTokenizer, checkpoint_dir_for, fit_tokenizer

log = logging.getLogger(__name__)

ENTITIES = ("user", "item")
EMBEDDINGS_FILE = Path("gnn") / "embeddings.safetensors"
TOKENIZER_DIR = "tokenizer"
TOKENS_FILE = "tokens.safetensors"
MANIFEST_FILE = "tokenizer.json"


def run(cfg: Config, snapshot: Path, run_dir: Path) -> dict[str, Any]:
    """Train the user and item tokenizers of ``run_dir`` and write their artifacts.

    Args:
        cfg: the resolved configuration (``tokenizer``, ``train`` and ``gnn.output`` are used).
        snapshot: the interactions snapshot of this run (not read: the tokenizers see only GNN embeddings).
        run_dir: the run folder holding ``gnn/embeddings.safetensors``.

    Returns:
        A summary: the output folder, the kind, and per entity kind the headline statistics.

    Raises:
        InputError: the GNN embeddings are missing, unreadable, incomplete or not finite.
    """
    del snapshot  # the tokenizer's only input is the GNN output
    run_dir = Path(run_dir)
    out = run_dir / TOKENIZER_DIR
    embeddings = load_gnn_embeddings(run_dir, cfg.gnn.output)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # a rerun: the folder is incomplete until it is rewritten

    trained: dict[str, TrainedTokenizer] = {}
    tables: dict[str, Tensor] = {}
    hashes: dict[str, str] = {}
    for entity in ENTITIES:
        result = fit_tokenizer(
            embeddings[entity], cfg.tokenizer, cfg.train, checkpoint_dir_for(out, entity), name=entity
        )
        trained[entity] = result
        tables[entity] = disambiguate(result.codes) if cfg.tokenizer.disambiguate else result.codes
        weights_file = f"{entity}_tokenizer.safetensors"
        hashes[weights_file] = _write(out / weights_file, save(_contiguous(result.model.state_dict())))
        plot_file = f"{entity}_codebook_usage.png"
        hashes[plot_file] = _write(
            out / plot_file, usage_plot_png(result.codes, result.model.codebook_size, entity)
        )

    tokens = {f"{entity}_codes": tables[entity].to(torch.int64).contiguous() for entity in ENTITIES}
    hashes[TOKENS_FILE] = _write(out / TOKENS_FILE, save(tokens))
    stats = {
        entity: {**trained[entity].stats, "token_levels": tables[entity].shape[1]} for entity in ENTITIES
    }
    atomic_write_json(out / "stats.json", stats)
    atomic_write_json(out / "history.json", {entity: trained[entity].history for entity in ENTITIES})
    save_config(cfg, out)
    manifest = {
        "kind": cfg.tokenizer.kind,
        "tokenizer": dataclasses.asdict(cfg.tokenizer),
        "embeddings": cfg.gnn.output,
        "disambiguated": cfg.tokenizer.disambiguate,
        "entities": {
            entity: {
                **trained[entity].model.describe(),
                "count": int(tables[entity].shape[0]),
                "token_levels": int(tables[entity].shape[1]),
                "level_sizes": level_sizes(tables[entity], trained[entity].model.codebook_size),
                "weights": f"{entity}_tokenizer.safetensors",
            }
            for entity in ENTITIES
        },
        "tokens": TOKENS_FILE,
        "sha256": hashes,
        "tokenizer_hash": tokenizer_hash(hashes),
        "config_hash": cfg.hash(),
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)  # written last: its presence means a complete output
    summary = {
        "tokenizer_dir": str(out),
        "kind": cfg.tokenizer.kind,
        "tokenizer_hash": manifest["tokenizer_hash"],
        **{
            entity: {
                key: stats[entity][key]
                for key in ("entities", "usage", "perplexity", "colliding_entities", "recon_mse", "seconds")
            }
            for entity in ENTITIES
        },
    }
    log.info("tokenizers written to %s", out)
    return summary


def load_gnn_embeddings(run_dir: Path, output: str = "propagated") -> dict[str, Tensor]:
    """The user and item embeddings the tokenizers read: ``{"user": (n_users, d), "item": (n_items, d)}``.

    Raises:
        InputError: the file is missing or unreadable, a tensor is absent, not 2-D, or not finite.
    """
    path = Path(run_dir) / EMBEDDINGS_FILE
    if not path.is_file():
        raise InputError(path, "GNN embeddings not found", "Run `tokenrec train-gnn` for this run first.")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise InputError(
            path, f"cannot read the GNN embeddings ({exc})", "Rerun `tokenrec train-gnn`."
        ) from exc
    suffix = "_ego" if output == "ego" else ""
    found = {}
    for entity in ENTITIES:
        key = f"{entity}{suffix}"
        if key not in tensors:
            raise InputError(
                path,
                f"tensor {key!r} (gnn.output={output}) is missing; present: {', '.join(sorted(tensors))}",
                "Rerun `tokenrec train-gnn`, or set gnn.output to match the file.",
                field=key,
            )
        value = tensors[key]
        if value.ndim != 2 or value.shape[0] == 0:
            raise InputError(
                path,
                f"{key} must be a non-empty (n, d) matrix, got {tuple(value.shape)}",
                "Rerun `tokenrec train-gnn`.",
                field=key,
            )
        bad = int((~torch.isfinite(value)).any(dim=1).sum())
        if bad:
            raise InputError(
                path,
                f"{key} has {bad} rows with NaN or infinite values",
                "The GNN training diverged; rerun `tokenrec train-gnn` (lower gnn.lr).",
                field=key,
            )
        found[entity] = value.float()
    return found


def load_tokenizer(tokenizer_dir: Path, entity: str) -> Tokenizer:
    """Rebuild the trained ``entity`` (``user`` or ``item``) tokenizer of a ``tokenizer/`` folder, in eval mode.

    Raises:
        InputError: the folder is incomplete, or the weights' SHA-256 differs from the one in tokenizer.json.
    """
    tokenizer_dir = Path(tokenizer_dir)
    manifest_path = tokenizer_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(manifest_path, "no complete tokenizer here", "Run `tokenrec train-tokenizer` first.")
    manifest = read_json(manifest_path)
    if entity not in manifest["entities"]:
        raise InputError(manifest_path, f"no tokenizer for {entity!r}", f"Use one of {', '.join(ENTITIES)}.")
    spec = manifest["entities"][entity]
    weights_path = tokenizer_dir / spec["weights"]
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"][spec["weights"]]:
        raise InputError(
            weights_path,
            "weights differ from those recorded in tokenizer.json",
            "Do not mix files of different runs; rerun `tokenrec train-tokenizer`.",
        )
    model = build_tokenizer(TokenizerConfig(**manifest["tokenizer"]), spec["input_dim"])
    model.load_state_dict(load(blob))
    return model.eval()


def usage_plot_png(codes: Tensor, codebook_size: int, entity: str) -> bytes:
    """PNG of the sorted code frequencies of every level (a flat line = every code equally used)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no global backend switch (Agg, headless)
    from matplotlib.figure import Figure

    from tokenrec.models.quantizer import perplexity

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for level in range(codes.shape[1]):
        counts = torch.bincount(codes[:, level], minlength=codebook_size)
        ranked = torch.sort(counts, descending=True).values.numpy()
        used = int((counts > 0).sum())
        ax.plot(
            range(1, codebook_size + 1),
            ranked,
            label=f"level {level + 1}: {used}/{codebook_size} used, perplexity {perplexity(counts):.0f}",
        )
    ax.set_xlabel("code rank")
    ax.set_ylabel(f"{entity}s with this code")
    ax.set_yscale("symlog")
    ax.set_title(f"{entity} tokenizer: codebook usage ({codes.shape[0]} {entity}s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def tokenizer_hash(hashes: dict[str, str]) -> str:
    """One SHA-256 naming both tokenizers and the token table (what a model built on them records)."""
    parts = [f"{name}={hashes[name]}" for name in sorted(hashes) if name.endswith(".safetensors")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def level_sizes(table: Tensor, codebook_size: int) -> list[int]:
    """Vocabulary size of every column of a token table.

    L for every tokenizer level; for a disambiguation level, L or, when more entities share one tuple, their
    number.
    """
    return [max(codebook_size, int(column.max()) + 1) for column in table.T]


def _write(path: Path, blob: bytes) -> str:
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().contiguous() for key, value in state.items()}

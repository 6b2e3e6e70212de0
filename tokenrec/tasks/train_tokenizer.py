"""Stage ``train-tokenizer``: GNN embeddings -> user and item ID tokenizers and the token table.

Reads ``run_dir/gnn/embeddings.safetensors`` (``user``/``item`` propagated, or ``user_ego``/``item_ego`` when
``gnn.output`` is ``ego``), trains one tokenizer for users and one for items (``tokenizer.kind``, PAPER.md
section 2) and writes into ``run_dir/tokenizer/``:

- ``user_tokenizer.safetensors``, ``item_tokenizer.safetensors``: weights;
- ``tokens.safetensors``: int64 ``user_codes`` (n_users, K) and ``item_codes`` (n_items, K);
- ``stats.json``: per entity kind, codebook usage and perplexity per level, reconstruction error, collisions;
- ``history.json``: per entity kind, one record per epoch (losses, usage, perplexity, re-seeded codes);
- ``user_codebook_usage.png``, ``item_codebook_usage.png``: rank-frequency of the codes of every level;
- ``config.yaml``; and, last, ``tokenizer.json``: what rebuilds the modules
  (:func:`tokenrec.artifacts.load_tokenizer`), the
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
from safetensors.torch import save
from torch import Tensor

from tokenrec.artifacts import load_embeddings, tokenizer_hash
from tokenrec.config import Config, save_config
from tokenrec.models.quantizer import disambiguate, perplexity
from tokenrec.run_folder import ENTITIES, TOKENIZER, RunFolder, gnn_table
from tokenrec.storage import atomic_write_bytes, atomic_write_json
from tokenrec.training.tokenizer import TrainedTokenizer, fit_tokenizer

log = logging.getLogger(__name__)


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
    run = RunFolder(run_dir)
    out = run.tokenizer
    embeddings = tokenizer_inputs(run, cfg.gnn.output)
    run.tokenizer_manifest.unlink(missing_ok=True)  # a rerun: the folder is incomplete until it is rewritten

    trained: dict[str, TrainedTokenizer] = {}
    tables: dict[str, Tensor] = {}
    hashes: dict[str, str] = {}
    for entity in ENTITIES:
        result = fit_tokenizer(
            embeddings[entity], cfg.tokenizer, cfg.train, run.tokenizer_checkpoints(entity), name=entity
        )
        trained[entity] = result
        tables[entity] = disambiguate(result.codes) if cfg.tokenizer.disambiguate else result.codes
        _write(run.tokenizer_weights(entity), save(_contiguous(result.model.state_dict())), hashes)
        _write(run.codebook_usage_plot(entity), usage_plot_png(result.codes, result.model.codebook_size, entity),
               hashes)  # fmt: skip

    tokens = {f"{entity}_codes": tables[entity].to(torch.int64).contiguous() for entity in ENTITIES}
    _write(run.tokens, save(tokens), hashes)
    stats = {
        entity: {**trained[entity].stats, "token_levels": tables[entity].shape[1]} for entity in ENTITIES
    }
    atomic_write_json(run.tokenizer_stats, stats)
    atomic_write_json(run.history(TOKENIZER), {entity: trained[entity].history for entity in ENTITIES})
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
                "weights": run.tokenizer_weights(entity).name,
            }
            for entity in ENTITIES
        },
        "tokens": run.tokens.name,
        "sha256": hashes,
        "tokenizer_hash": tokenizer_hash(hashes),
        "config_hash": cfg.hash(),
    }
    atomic_write_json(run.tokenizer_manifest, manifest)  # written last: its presence means a complete output
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


def tokenizer_inputs(run: RunFolder, output: str = "propagated") -> dict[str, Tensor]:
    """The GNN tables the tokenizers read, ``{"user": (n_users, d), "item": (n_items, d)}`` (``gnn.output``).

    Raises:
        InputError: the embeddings are missing, unreadable, not 2-D or not finite
            (:func:`tokenrec.artifacts.load_embeddings`).
    """
    names = {entity: gnn_table(entity, output) for entity in ENTITIES}
    tables = load_embeddings(run, list(names.values()))
    return {entity: tables[name] for entity, name in names.items()}


def usage_plot_png(codes: Tensor, codebook_size: int, entity: str) -> bytes:
    """PNG of the sorted code frequencies of every level (a flat line = every code equally used)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no global backend switch (Agg, headless)
    from matplotlib.figure import Figure

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


def level_sizes(table: Tensor, codebook_size: int) -> list[int]:
    """Vocabulary size of every column of a token table.

    L for every tokenizer level; for a disambiguation level, L or, when more entities share one tuple, their
    number.
    """
    return [max(codebook_size, int(column.max()) + 1) for column in table.T]


def _write(path: Path, blob: bytes, hashes: dict[str, str]) -> None:
    """Write ``blob`` to ``path`` and record its SHA-256 under the file name in ``hashes``."""
    atomic_write_bytes(path, blob)
    hashes[path.name] = hashlib.sha256(blob).hexdigest()


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().contiguous() for key, value in state.items()}

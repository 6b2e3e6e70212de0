"""Atomic checkpoints and resume from the last complete one (R5 of RELIABILITY.md).

A checkpoint is one file ``step-<n>.pt`` written to a temporary name, flushed, fsynced and renamed, so a kill
leaves either the previous set of complete files or a stray ``.tmp`` that is ignored. Loading uses
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, nothing unpickled.
Resume walks the checkpoints newest first and takes the first that loads, so even a file damaged by something
else (a full disk, a copy) costs one checkpoint, not the run.

Checkpoints resume only the run that wrote them: each trainer keeps them in ``checkpoints/<fingerprint>``,
a digest of its settings, seed and data (:func:`fingerprint`); a run with other settings or data starts fresh
and removes the stale folder (:func:`fingerprint_folder`), instead of silently continuing a different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenrec.storage import atomic_open

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)\.pt$")
# settings that do not change a training trajectory: a finished run can be continued for more epochs
RESUME_NEUTRAL = frozenset(
    {"max_epochs", "patience", "eval_batch_size", "threads", "seeds", "output", "checkpoint_steps",
     "report_variants", "cache_dir"}
)  # fmt: skip


def fingerprint(settings: Any, seed: int, arrays: Sequence[np.ndarray] = (), extra: Any = None) -> str:
    """16 hex digits naming a training run: its settings (a dataclass), seed, ``extra`` and data ``arrays``.

    Fields in :data:`RESUME_NEUTRAL` are left out; everything else that shapes the trajectory is in.
    """
    fields = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(vars(settings))
    values = {k: v for k, v in fields.items() if k not in RESUME_NEUTRAL}
    digest = hashlib.sha256(json.dumps([values, seed, extra], sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(str(np.shape(array)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def fingerprint_folder(root: str | os.PathLike[str], key: str, remove_others: bool = True) -> Path:
    """``root/key``, the checkpoint folder of run ``key``; other runs' folders and loose checkpoints in
    ``root`` are stale (the settings or the data changed) and are removed unless ``remove_others`` is False."""
    root = Path(root)
    folder = root / key
    if remove_others and root.is_dir():
        for stale in root.iterdir():
            if stale.is_dir() and stale != folder:
                log.info("removing checkpoints of a different run: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
            elif stale.is_file() and (_NAME.match(stale.name) or stale.name.startswith(".step-")):
                stale.unlink(missing_ok=True)  # the layout before fingerprints
    return folder


class CheckpointManager:
    """Save and find checkpoints in ``folder``; keeps the newest ``keep`` files."""

    def __init__(self, folder: str | os.PathLike[str], keep: int = 2) -> None:
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` (state dicts, counters, RNG states) as the checkpoint of ``step``."""
        final = self.folder / f"step-{step:08d}.pt"
        with atomic_open(final) as fh:
            torch.save(state, fh)
        self._prune()
        return final

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint that loads completely, as (step, state); None when there is none."""
        for step in reversed(self.steps()):
            path = self.folder / f"step-{step:08d}.pt"
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:  # a damaged file: fall back to the one before
                log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, exc)
                continue
            log.info("resuming from %s", path)
            return step, state
        return None

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            (self.folder / f"step-{step:08d}.pt").unlink(missing_ok=True)
        for stray in self.folder.glob(".step-*.tmp"):
            stray.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors so that a resumed run continues the same random stream."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; the states may come back on a GPU (a checkpoint loaded with map_location)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

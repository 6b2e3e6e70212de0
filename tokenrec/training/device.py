"""Device and precision selection: a GPU when present, the CPU otherwise; reproducible seeding."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks ``cuda`` when available, else ``cpu``; ``cpu``/``cuda``/``cuda:1`` are taken as given."""
    if preference == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} was asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    log.info("training on %s", device)
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype to use: bf16 on a GPU that supports it (``auto``), none (fp32) on the CPU."""
    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def cpu_threads() -> int:
    """Threads for intra-op parallelism on the CPU (all cores unless OMP_NUM_THREADS says otherwise)."""
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))

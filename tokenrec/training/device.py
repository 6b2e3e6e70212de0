"""Device, precision and CPU thread selection: a GPU when present, the CPU otherwise; reproducible seeding."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Iterator

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
    """The autocast dtype to use: ``bf16``, ``fp32`` (None: no autocast), or ``auto``.

    ``auto`` is bf16 on a GPU that supports it, and on a CPU where bf16 matrix products are measured to be
    clearly faster than fp32 ones (:func:`cpu_bf16_is_faster`: CPUs with AMX or AVX512-BF16 units; elsewhere
    bf16 is emulated and slower, so fp32 stays).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16_is_faster() else None


@functools.cache
def cpu_bf16_is_faster(size: int = 512, repeats: int = 5, margin: float = 1.5) -> bool:
    """Whether a bf16 matrix product on this CPU is more than ``margin`` times as fast as an fp32 one.

    Measured once per process on a ``(size, 2 size) @ (2 size, 2 size)`` product (about 0.1 s in all): the
    LLM backbone's time is mostly such products. On this project's 2-core benchmark machine (Intel, AMX) a
    MiniLM training step ran 2.0x and inference 2.7x as fast under bf16 autocast (docs/BENCHMARKS.md).
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, 2 * size, generator=generator)
    b = torch.randn(2 * size, 2 * size, generator=generator)

    def fastest(dtype: torch.dtype) -> float:
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up (kernel selection)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    fp32, bf16 = fastest(torch.float32), fastest(torch.bfloat16)
    faster = bf16 * margin < fp32
    log.info("CPU matrix product: fp32 %.2f ms, bf16 %.2f ms: autocast %s", 1e3 * fp32, 1e3 * bf16,
             "bf16" if faster else "off (fp32)")  # fmt: skip
    return faster


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def cpu_threads() -> int:
    """Threads for intra-op parallelism on the CPU (all cores unless OMP_NUM_THREADS says otherwise)."""
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


def set_threads(count: int) -> tuple[int, int]:
    """Set torch's intra-op and faiss's OpenMP threads to ``count``; return the previous ``(torch, faiss)``."""
    import faiss  # imported here: training modules that never search pay nothing for it

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    return before


@contextlib.contextmanager
def torch_threads(count: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with ``count`` torch and faiss CPU threads, then restore the previous counts.

    ``count`` < 1 leaves the counts alone, and so does a ``device`` other than the CPU. Two reasons to limit
    them: small per-step kernels gain little from OpenMP workers, and workers that spin-wait for them cost many
    times more than they save as soon as other processes share the cores (measured 4-10x on a busy 2-core
    machine), so trainers of small models pass 1; and matrix products split rows over threads differently for
    different counts, so the last bit of a score can depend on the count: inference engines that must agree
    bit for bit use the same one.
    """
    if count < 1 or (device is not None and device.type != "cpu"):
        yield
        return
    before_torch, before_faiss = set_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        import faiss

        faiss.omp_set_num_threads(before_faiss)

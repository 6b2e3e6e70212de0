"""What every benchmark result records: the machine, the commit, the date and the command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from tokenrec.storage import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "benchmarks"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def git_commit() -> str:
    """The checkout's short commit (``-dirty`` with local changes), or ``TOKENREC_COMMIT`` where git is absent."""
    if os.environ.get("TOKENREC_COMMIT"):  # a copy of the tree without .git (a GPU machine, an image)
        return os.environ["TOKENREC_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, results: Any, command: str | None = None) -> Path:
    """Write ``docs/benchmarks/<name>.json`` with the results and where/how they were measured."""
    payload = {
        "command": command or " ".join(["python", "-m", *sys.argv]) if sys.argv else "",
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "results": results,
    }
    path = atomic_write_json(RESULTS / f"{name}.json", payload)
    print(json.dumps(payload, indent=2))
    return path


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that trains on one snapshot: where, and the config layers (as the CLI's)."""
    parser.add_argument("--snapshot", required=True, type=Path, help="interactions snapshot folder")
    parser.add_argument("--run-dir", required=True, type=Path, help="run folder for the stages' outputs")
    parser.add_argument("--dataset", help="data set preset (ml100k, lastfm, beauty)")
    parser.add_argument("--profile", help="shipped config profile (tokenrec/profiles/<name>.yaml)")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")

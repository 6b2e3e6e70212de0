"""Named data sets: where their raw file lies and in which format, so ``--dataset lastfm`` just works.

- ``ml100k``: MovieLens-100K, embedded in the PyPI package ``recbole==1.2.1`` (installed by ``make``; its
  licence forbids redistribution, so the file is read from site-packages, never copied into the project).
- ``lastfm``, ``beauty``: ``user_sequence.txt`` in the shared benchmark folder (``$TOKENREC_SHARED_DATA`` or
  ``../shared/data`` beside the checkout).
- anything else: no preset; configure ``source.*`` yourself (see README, "Your own data").
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tokenrec.errors import InputError

SHARED_SETS = ("lastfm", "beauty")


def shared_data_root() -> Path:
    env = os.environ.get("TOKENREC_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def movielens_100k_path() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise InputError(
            "recbole", "the package that ships MovieLens-100K is not installed",
            "run `make install` (it installs recbole==1.2.1 --no-deps)",
        )
    return Path(spec.origin).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


def movielens_100k_titles() -> Path:
    return movielens_100k_path().with_name("ml-100k.item")


def preset(name: str) -> dict[str, Any]:
    """The config layer for a named data set (empty for names without a preset)."""
    if name == "ml100k":
        return {"source": {"dataset": name, "format": "movielens_inter", "path": str(movielens_100k_path())}}
    if name in SHARED_SETS:
        path = shared_data_root() / name / "user_sequence.txt"
        return {"source": {"dataset": name, "format": "user_sequence", "path": str(path)}}
    return {"source": {"dataset": name}}

"""Pipeline task ``register``: package a finished retrain as one MLflow pyfunc and register it as challenger.

Reads the run folder (``gnn/``, ``tokenizer/``, ``llm/``, ``eval/metrics.json``) and the interactions snapshot
of ``ds`` (the training snapshot: its histories and ID maps go into the model, see :mod:`tokenrec.mlops.packaging`),
logs the model into a ``package`` child run of the retrain (``run_dir.name``), and registers it with
:func:`tokenrec.mlops.registry.register`: a new version of ``mlflow.registered_model`` carrying the evaluation
metrics (the new model's and the champion's on the same split) and the tokenizer hash as tags, with the alias
``challenger``. ``promote`` decides about champion. A failure ends the retrain's MLflow run FAILED.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.errors import InputError
from tokenrec.mlops import packaging, registry, tracking
from tokenrec.run_folder import RunFolder
from tokenrec.storage import read_json

log = logging.getLogger(__name__)


def run(cfg: Config, ds: str, run_dir: Path | None) -> dict[str, Any]:
    """Package ``run_dir``, log it to MLflow and register it as the ``challenger``.

    Args:
        cfg: the resolved configuration (saved inside the model).
        ds: the logical date of the retrain; its interactions snapshot is the training snapshot.
        run_dir: the retrain's run folder; its name is the retrain id.

    Returns:
        ``model_name``, ``version``, ``model_uri``, ``tokenizer_hash``, ``retrain_id``.

    Raises:
        InputError: no run folder, no evaluation metrics, or a run that does not match the snapshot.
        tokenrec.mlops.packaging.ModelIntegrityError: the tokenizer files differ from their recorded hashes.
    """
    if run_dir is None:
        raise InputError(
            "--run-id", "register needs the retrain's run folder", "Pass --run-id (or the default)."
        )
    run_dir = Path(run_dir)
    retrain_id = run_dir.name
    snapshot = schema.Lake.at(cfg.paths.lake).interactions(ds)
    with (
        tracking.failing_retrain(cfg, retrain_id, "register", snapshot),
        tempfile.TemporaryDirectory(prefix="tokenrec-bundle-") as tmp,
    ):
        metrics_path = RunFolder(run_dir).eval_metrics
        if not metrics_path.is_file():
            raise InputError(
                metrics_path, "no evaluation metrics", "Run `tokenrec evaluate` for this run first."
            )
        metrics = read_json(metrics_path)
        bundle = packaging.build_bundle(cfg, run_dir, snapshot, Path(tmp) / "bundle")
        with tracking.stage_run(cfg, retrain_id, "package", snapshot):
            uri = packaging.log_model(Path(tmp) / "bundle")
        version = registry.register(cfg, retrain_id, uri, metrics, bundle["tokenizer_hash"])
    log.info("registered %s version %d from %s", cfg.mlflow.registered_model, version, run_dir)
    return {
        "model_name": cfg.mlflow.registered_model,
        "version": version,
        "alias": registry.CHALLENGER,
        "model_uri": uri,
        "tokenizer_hash": bundle["tokenizer_hash"],
        "retrain_id": retrain_id,
    }

"""``tokenrec show --ds D``: what a run produced, for a person at a terminal.

Prints the published recommendations partition and its manifest, the champion model version, three example
users with their top-10 (with titles where the data set has them: MovieLens-100K ships ``ml-100k.item``), and how
to open the Airflow and MLflow UIs on the local stores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenrec import schema
from tokenrec.config import Config
from tokenrec.data.datasets import movielens_100k_titles
from tokenrec.storage import is_published, read_manifest


def titles(cfg: Config) -> dict[str, str]:
    """Item titles by raw item id, where the data set has them."""
    if cfg.source.dataset != "ml100k":
        return {}
    path = movielens_100k_titles()
    if not path.is_file():
        return {}
    with path.open(encoding="latin-1") as fh:
        rows = csv.reader(fh, delimiter="\t")
        next(rows)
        return {r[0]: f"{r[1]} ({r[2]})" if len(r) > 2 and r[2] else r[1] for r in rows if len(r) > 1}


def show(cfg: Config, ds: str, examples: int = 3, k: int = 10) -> str:
    lake = schema.Lake.at(cfg.paths.lake)
    out = lake.recommendations(ds)
    lines = []
    if not is_published(out):
        lines.append(f"No published recommendations for {ds} at {out} (run the nightly DAG or `tokenrec run`).")
    else:
        manifest = read_manifest(out)
        lines += [
            f"Recommendations for {ds}: {out}",
            f"  {manifest.get('rows')} rows for {manifest.get('users')} users from model "
            f"{manifest.get('model_name')} version {manifest.get('model_version')}",
        ]
        table = pq.read_table(out, schema=schema.RECOMMENDATIONS)
        names = titles(cfg)
        users = sorted(set(table.column(schema.USER_ID).to_pylist()), key=lambda u: (len(u), u))[:examples]
        for user in users:
            rows = table.filter(pc.equal(table.column(schema.USER_ID), user)).sort_by(schema.RANK).slice(0, k)
            lines.append(f"  user {user}:")
            for rank, item, score in zip(
                rows.column(schema.RANK).to_pylist(), rows.column(schema.ITEM_ID).to_pylist(),
                rows.column(schema.SCORE).to_pylist(), strict=True,
            ):
                lines.append(f"    {rank:>2}. {names.get(item, 'item ' + item)}  (score {score:.3f})")
    try:
        from tokenrec.mlops.registry import resolve_alias, tracking_uri

        champion = resolve_alias(cfg, "champion")
        lines.append(f"Champion: models:/{champion.name}@champion = version {champion.version}")
        uri = tracking_uri(cfg)
    except Exception as exc:  # no registry yet: say so rather than fail the summary
        lines.append(f"Champion: none yet ({exc})")
        uri = None
    home = Path(cfg.paths.home).resolve()
    lines += [
        "",
        f"Interactions snapshot: {lake.interactions(ds)}",
        f"Validation report:     {lake.validation_report(schema.INTERACTIONS_TABLE, ds) / 'data_docs' / 'index.html'}",
        f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri or 'sqlite:///' + str(home / 'mlflow' / 'mlflow.db')}",
        f"Airflow UI: AIRFLOW_HOME={home / 'airflow'} AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags "
        "AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__PARALLELISM=4 .venv/bin/airflow standalone",
    ]
    return "\n".join(lines)

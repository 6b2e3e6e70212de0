"""Pipeline stages: ``run(cfg, snapshot, run_dir) -> summary`` per stage, each writing under ``run_dir``.

The CLI (``tokenrec <stage>``) and the Airflow jobs call these; artifacts between stages follow the run
folder contract in ``docs/`` (``gnn/``, ``tokenizer/``, ``eval/``, ...).
"""

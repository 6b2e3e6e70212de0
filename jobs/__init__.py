"""Thin entry points, one per pipeline task: parse arguments, call tokenrec, exit non-zero on failure.

Each is runnable as ``python -m jobs.<task> --ds D [...]`` or with ``spark-submit jobs/<task>.py --ds D``;
the DAGs in ``dags/`` call these and nothing else.
"""

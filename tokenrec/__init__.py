"""tokenrec: TokenRec on Airflow, Spark and MLflow."""

__version__ = "0.1.0"

"""MLflow: tracking of stage runs, plots, packaging a retrain as one pyfunc, the registry and promotion gate."""

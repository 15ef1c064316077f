"""MLflow: the project store, stage runs with identity tags, registry and pyfunc model."""

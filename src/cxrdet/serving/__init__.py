"""The ensemble as an MLflow pyfunc model: its input table, the model class (models from
code, weights as artifacts), logging it offline, and a local scoring server for tests and
benchmarks. Registry operations (versions, aliases, promotion) are cxrdet.tracking.registry."""

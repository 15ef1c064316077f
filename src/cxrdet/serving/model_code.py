"""MLflow models-from-code entry point of the ensemble model: MLflow copies this file into
the model and runs it on load (it is not imported by cxrdet). No pickled object: the model
is this code plus the `bundle` artifact (cxrdet.serving.pyfunc_model)."""

from mlflow.models import set_model

from cxrdet.serving.pyfunc_model import EnsembleModel

set_model(EnsembleModel())

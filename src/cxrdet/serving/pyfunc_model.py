"""The ensemble as an MLflow pyfunc model (logged from code: cxrdet/serving/model_code.py).

The model directory's `bundle` artifact is a predictor directory (cxrdet.infer.predictor
save_bundle: predictor.json + fold model files, loaded with torch weights_only=True); no
Python object is pickled. `predict` takes the input table of cxrdet.serving.inputs and
returns one row per image:

    image_id          as given
    boxes             [{x, y, w, h, score, class_id, class_name}], original pixels, best first
    probability       the classifiers' P(opacity) (VinBigData: P(abnormal)); null without
                      classifiers
    PredictionString  the competition's string (rsna: `conf x y w h`..., vinbigdata: its
                      layout with `14 1 0 0 1 1` for no box, other formats: the VinBigData box
                      layout)

Bad input raises MlflowException(INVALID_PARAMETER_VALUE) naming the row and column, which
the scoring server answers with HTTP 400 and that message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array, Object, Property

from cxrdet.ensemble import Ensembled
from cxrdet.errors import CxrdetError, ImageReadError
from cxrdet.formats import output_format
from cxrdet.infer.predictor import EnsemblePredictor
from cxrdet.serving.inputs import ID, IMAGE, PATH, image_files
from cxrdet.serving.path_root import configured_root
from cxrdet.submission import prediction_strings

BUNDLE = "bundle"  # the artifact holding the predictor directory
OUTPUT_COLUMNS = [ID, "boxes", "probability", "PredictionString"]
BOX_FIELDS = [
    ("x", "double"),
    ("y", "double"),
    ("w", "double"),
    ("h", "double"),
    ("score", "double"),
    ("class_id", "long"),
    ("class_name", "string"),
]
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", ID),
            ColSpec("string", IMAGE, required=False),
            ColSpec("string", PATH, required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("string", ID),
            ColSpec(Array(Object([Property(name, kind) for name, kind in BOX_FIELDS])), "boxes"),
            ColSpec("double", "probability", required=False),
            ColSpec("string", "PredictionString"),
        ]
    ),
)


def output_frame(
    result: Ensembled, image_ids: list[str], class_names: list[str], fmt: str
) -> pd.DataFrame:
    """One row per image of `image_ids` (OUTPUT_COLUMNS) from the ensemble's result."""
    strings = dict(
        prediction_strings(result.boxes, output_format(fmt).string_layout, image_ids=image_ids)
    )
    boxes: dict[str, list[dict[str, Any]]] = {image_id: [] for image_id in image_ids}
    for row in result.boxes.itertuples(index=False):  # best first within each image
        boxes[str(row.image_id)].append(
            {
                "x": float(row.x),
                "y": float(row.y),
                "w": float(row.w),
                "h": float(row.h),
                "score": float(row.score),
                "class_id": int(row.class_id),
                "class_name": class_names[int(row.class_id)],
            }
        )
    opacity = result.probabilities.get("opacity")
    scored = [np.nan] * len(image_ids) if opacity is None else opacity.reindex(image_ids).tolist()
    return pd.DataFrame(
        {
            ID: image_ids,
            "boxes": [boxes[i] for i in image_ids],
            "probability": [
                None if np.isnan(p) else float(p) for p in scored
            ],  # JSON has no NaN: null
            "PredictionString": [strings[i] for i in image_ids],
        }
    )[OUTPUT_COLUMNS]


class EnsembleModel(PythonModel):
    """Every fold classifier and detector, their TTA views and the tuned recipe."""

    predictor: EnsemblePredictor
    path_root: Path | None  # where `path` inputs may point; None: nowhere

    def load_context(self, context: Any) -> None:
        config = context.model_config or {}  # load_model(model_config={"device": ...})
        self.path_root = configured_root(config)
        self.predictor = EnsemblePredictor.load(
            Path(context.artifacts[BUNDLE]), device=config.get("device", "auto")
        )

    # MLflow reads the `model_input` hint: pd.DataFrame keeps the explicit SIGNATURE (a hint
    # it can derive a schema from would replace it).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """`model_input`: see cxrdet.serving.inputs; returns OUTPUT_COLUMNS."""
        try:
            return self.predict_frame(model_input)
        except CxrdetError as error:  # bad input: the server answers 400 with this message
            raise MlflowException.invalid_parameter_value(str(error)) from None

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        spec = self.predictor.spec
        with tempfile.TemporaryDirectory(prefix="cxrdet-input-") as workdir:
            files = image_files(frame, Path(workdir), self.path_root)
            try:
                result = self.predictor.predict(files.paths, files.image_ids)
            except ImageReadError as error:
                raise files.explain(error) from None
        return output_frame(result, files.image_ids, spec.class_names, spec.fmt)

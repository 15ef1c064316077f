"""A trained fold model attached to its stage's run as an MLflow LoggedModel (the run's and
the experiment's Models tab): its weights files as written for DVC, and a model card.

Weights files, not a pickled module: they load with the project's own loaders
(`torch.load(weights_only=True)`), like every model file of the pipeline. The ensemble
that serves is the registered pyfunc model (cxrdet.serving); these are its parts, kept
with the run that trained them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

CARD = "README.md"


def model_card(title: str, facts: Mapping[str, object], how_to_load: str) -> str:
    """Markdown: what the model is, a table of facts (data hash, fold, scores), how to load it."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    return f"# {title}\n\n| | |\n| --- | --- |\n{rows}\n\n## Load\n\n{how_to_load}\n"


def log_model_files(
    name: str,
    files: Sequence[Path],
    card: str,
    *,
    model_type: str,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> str:
    """A READY LoggedModel `name` of run `run_id` (default: the active run) holding `files`
    and `card` (README.md); returns its model id."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput

    model = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run_id,
        model_type=model_type,
        params={key: str(value) for key, value in (params or {}).items()},
        tags=dict(tags or {}),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="cxrdet-model-") as scratch:
            folder = Path(scratch)
            for path in files:
                shutil.copy2(path, folder / path.name)
            (folder / CARD).write_text(card)
            MlflowClient().log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(model.model_id, "READY")
    # The run's output, as a flavor's log_model records it: listed on the run's page.
    MlflowClient().log_outputs(model.source_run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id

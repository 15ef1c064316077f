"""Optuna studies for every tuning stage: storage, seeded TPE, pruner, MLflow nesting.

Storage is a journal file by default: several workers on one machine can share it
(`python pipelines/tune_<x>.py` started N times), and a killed run resumes where it
stopped. For workers on several machines give an RDB URL (PostgreSQL, MySQL); never
sqlite with parallel workers, nor on NFS (PITFALLS). A study's name carries a digest of
everything that makes its trials comparable, so a changed setup starts a new study in
the same storage instead of mixing results.

Each trial is an MLflow run nested under the active (stage's) run, tagged with its Optuna
state; a pruned trial is a finished run tagged PRUNED, not a failed one; a failed trial is a
FAILED run tagged with its reason (also kept in the study as the user attribute
"fail_reason"). Without an active run, trials are not tracked.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from cxrdet.config import PrunerParams, StudyParams
from cxrdet.errors import CxrdetError
from cxrdet.tracking.runs import log_numeric

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Objective = Callable[[optuna.Trial], float]


def study_name(prefix: str, identity: Mapping[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def storage_url(spec: str) -> str:
    """`spec` as SQLAlchemy takes it: a plain postgresql:// URL gets the psycopg (3) driver,
    which the `postgres` extra installs (SQLAlchemy's default for it is psycopg2)."""
    try:
        url = make_url(spec)
    except ArgumentError:
        raise CxrdetError(
            f"study.storage {spec!r}: not a database URL (e.g. postgresql://user@host/optuna)"
        ) from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def open_storage(spec: str | None, journal: Path) -> optuna.storages.BaseStorage:
    """`spec` None: the journal file `journal`; otherwise an RDB URL (CxrdetError naming it
    when its driver is missing or the database does not answer)."""
    if spec is None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    url = storage_url(spec)
    if url.startswith("sqlite"):
        warnings.warn(
            "study.storage: sqlite locks under parallel workers; use the journal file (null) "
            "or PostgreSQL",
            stacklevel=2,
        )
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as error:
        raise CxrdetError(
            f"study.storage {shown}: no database driver ({error}); for PostgreSQL: pip "
            "install -e '.[postgres]'"
        ) from None
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise CxrdetError(f"study.storage {shown}: cannot open the database: {reason}") from None


def make_pruner(params: PrunerParams, max_epochs: int) -> optuna.pruners.BasePruner:
    if params.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=params.startup_trials, n_warmup_steps=params.warmup_epochs
        )
    if params.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=params.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(
    name: str, params: StudyParams, journal: Path, pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """Create or resume the study `name` (maximised), sampled by a seeded TPE."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=params.startup_trials)
    return optuna.create_study(
        study_name=name,
        storage=open_storage(params.storage, journal),
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trials(
    study: optuna.Study,
    objective: Objective,
    trials: int,
    tags: Mapping[str, str] | None = None,
    catch: tuple[type[Exception], ...] = (),
    label: str = "trial",
) -> None:
    """Run trials until `trials` of them have finished (complete or pruned), counting those of
    earlier runs and of other workers; each trial is a nested MLflow run. A trial raising one
    of `catch` is recorded as failed (its reason in the user attribute "fail_reason") and the
    study goes on; failed trials do not count, but this call runs at most `trials` trials.
    Runs are named `<label>-<number>`: a label per study (`ens-trial`, `anchor-trial`) tells
    the trials of two studies apart in the runs table."""
    remaining = trials - finished_trials(study)
    if remaining <= 0:
        return
    study.optimize(
        tracked(objective, tags or {}, label),
        n_trials=remaining,
        catch=catch,
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED)],
    )


def tracked(objective: Objective, tags: Mapping[str, str], label: str = "trial") -> Objective:
    """`objective` inside a nested MLflow run holding the trial's params and state; the
    objective logs its value under its own metric name (oof.rsna_score, best.val.rsna), the
    column its stage's run and the other stages share."""

    def run(trial: optuna.Trial) -> float:
        if mlflow.active_run() is None:
            return _recording_failure(objective, trial)
        pruned: optuna.TrialPruned | None = None
        with mlflow.start_run(
            run_name=f"{label}-{trial.number}",
            nested=True,
            tags={**tags, "optuna.trial": str(trial.number)},
        ) as active:
            trial.set_user_attr("mlflow_run_id", active.info.run_id)
            try:
                value = _recording_failure(objective, trial)
            except optuna.TrialPruned as error:
                pruned = error  # a finished run, not a failed one: re-raised below
            except Exception:
                # the run ends FAILED; its params and reason stay visible in the MLflow UI
                mlflow.log_params({k: str(v) for k, v in trial.params.items()})
                mlflow.set_tags({"optuna.state": "FAIL", "optuna.fail_reason": trial_reason(trial)})
                raise
            mlflow.log_params({k: str(v) for k, v in trial.params.items()})
            mlflow.set_tag("optuna.state", "PRUNED" if pruned else "COMPLETE")
        if pruned is not None:
            raise pruned
        return value

    return run


def log_best_trial(trial: optuna.trial.FrozenTrial) -> None:
    """On the stage's run (the trials' parent): which trial won, with what params and value
    (params `best.trial.<name>`, metrics `best.trial.number` and `best.trial.value`, the
    same columns for every study), so the study's run answers without opening its trials."""
    mlflow.log_params({f"best.trial.{k}": str(v) for k, v in trial.params.items()})
    log_numeric({"best.trial": {"number": trial.number, "value": trial.value}})


def _recording_failure(objective: Objective, trial: optuna.Trial) -> float:
    """`objective(trial)`; an exception's reason is kept in the trial's storage (Optuna only
    logs it) before it propagates."""
    try:
        return objective(trial)
    except optuna.TrialPruned:
        raise
    except Exception as error:
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:2000])
        raise


def trial_reason(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    return str(trial.user_attrs.get("fail_reason", ""))


def report_epoch(trial: optuna.Trial, value: float, epoch: int, *, prune: bool = True) -> None:
    """Report one epoch's validation score, then prune if the pruner says so (PITFALLS: report
    before should_prune, once per epoch, comparable values). prune False: report only (a
    baseline trial whose full score is needed still informs the pruner about later ones)."""
    trial.report(value, epoch)
    if prune and trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch} (score {value:.4f})")

"""The MLflow model registry: versions, aliases, the promotion gate, rollback.

Aliases, never stages (deprecated): a new version gets `challenger`; `champion` moves to a
version only when its holdout metric beats the champion's by `min_delta` on the same
holdout (version tag cxrdet.holdout_hash), or when a user forces it. Every move of
`champion` is appended to the registered model's tag cxrdet.champion_history (aliases keep
no history), which `rollback` walks back; each version's tag cxrdet.gate says why it was or
was not promoted. Users load `models:/<name>@champion`; `resolve` turns an alias into the
version it points to now, so what is loaded is a fixed version.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cxrdet.errors import CxrdetError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "cxrdet.champion_history"  # registered model: champion versions, oldest first
HISTORY_KEEP = 200  # entries kept (tag values are bounded in size)
METRIC_TAG = "cxrdet.metric"  # version: the name of its gate metric (rsna_score, map40)
HOLDOUT_TAG = "cxrdet.holdout_hash"  # version: the images and data its metric was scored on
GATE_TAG = "cxrdet.gate"  # version: the last promotion decision about it, and why
METRIC_PREFIX = "metric."  # version: metric.<name> = holdout value
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def register_version(name: str, model_uri: str, tags: Mapping[str, str]) -> Any:
    """A new version of `name` (created if needed) from a logged model, tagged, aliased
    `challenger`; returns the ModelVersion."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=dict(tags))
    client().set_registered_model_alias(name, CHALLENGER, version.version)
    describe_model(name)
    return version


def version_tags(
    metrics: Mapping[str, Any], metric: str, identity: Mapping[str, str]
) -> dict[str, str]:
    """Tags of a new version: its numeric holdout metrics, which one gates, and `identity`
    (holdout hash, data hash, params hash, git commit)."""
    numeric = {
        f"{METRIC_PREFIX}{key}": repr(float(value))
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return {**numeric, METRIC_TAG: metric, **identity}


def champion(name: str) -> Any | None:
    """The ModelVersion aliased `champion`, or None."""
    aliases = _registered(name).aliases
    return client().get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None


def gate(name: str, version: str, min_delta: float) -> Decision:
    """Whether `version` should become champion: it beats the champion's holdout metric by
    at least `min_delta` (and by more than nothing) on the same holdout."""
    candidate = _version(name, version)
    current = champion(name)
    if current is None:
        return Decision(True, f"version {version} is the first champion of {name}")
    if str(current.version) == str(candidate.version):
        return Decision(False, f"version {version} is already the champion")
    metric = candidate.tags.get(METRIC_TAG)
    if metric is None or metric != current.tags.get(METRIC_TAG):
        return Decision(
            False,
            f"version {version} is scored by {metric}, champion version {current.version} "
            f"by {current.tags.get(METRIC_TAG)}: not comparable",
        )
    here, there = candidate.tags.get(HOLDOUT_TAG), current.tags.get(HOLDOUT_TAG)
    if here is None or here != there:
        return Decision(
            False,
            f"version {version} was scored on another holdout than champion version "
            f"{current.version} ({HOLDOUT_TAG} {here} vs {there}); not comparable",
        )
    new, old = score(candidate), score(current)
    if new is None:
        return Decision(False, f"version {version} has no holdout {metric}")
    if old is None:
        return Decision(True, f"{metric} {new:.4f}; champion version {current.version} has none")
    gain = new - old
    if gain > 0 and gain >= min_delta:
        return Decision(
            True,
            f"{metric} {new:.4f} beats champion version {current.version}'s {old:.4f} "
            f"by {gain:.4f} (min_delta {min_delta:g})",
        )
    return Decision(
        False,
        f"{metric} {new:.4f} does not beat champion version {current.version}'s {old:.4f} "
        f"by min_delta {min_delta:g} (gain {gain:+.4f})",
    )


def score(version: Any) -> float | None:
    """The version's holdout value of its gate metric (None: not scored, or NaN)."""
    text = version.tags.get(f"{METRIC_PREFIX}{version.tags.get(METRIC_TAG)}")
    value = None if text is None else float(text)
    return None if value is None or value != value else value


@contextmanager
def champion_lock(name: str) -> Iterator[None]:
    """Held while `champion` and its history tag are read and rewritten: two promotions or
    rollbacks at once would otherwise lose a history entry (MLflow has no compare-and-set).
    A file lock: it covers this machine's processes (next to a sqlite store)."""
    import mlflow

    from cxrdet.tracking.store import file_lock, lock_path

    with file_lock(lock_path(mlflow.get_tracking_uri(), f"registry-{_safe(name)}")):
        yield


def decide(name: str, version: str, decision: Decision) -> None:
    """Record `decision` on the version and, when it promotes, move `champion` there."""
    with champion_lock(name):
        _record(name, version, decision)


def promote(name: str, version: str, min_delta: float, force: bool = False) -> Decision:
    """The gate's checks (unless `force`) and their decision, against the champion of the
    moment (`cxrdet registry promote`, the register stage)."""
    _version(name, version)
    with champion_lock(name):
        decision = Decision(True, "forced by the user") if force else gate(name, version, min_delta)
        _record(name, version, decision)
    return decision


def _record(name: str, version: str, decision: Decision) -> None:
    if decision.promote:
        history = champion_history(name)
        client().set_registered_model_alias(name, CHAMPION, str(version))
        client().set_registered_model_tag(
            name, HISTORY_TAG, ",".join([*history, str(version)][-HISTORY_KEEP:])
        )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    verdict = "promoted" if decision.promote else "not promoted"
    client().set_model_version_tag(name, version, GATE_TAG, f"{stamp} {verdict}: {decision.reason}")
    describe_model(name)


# Identity tags a version is compared on with the one before it: what changed.
CHANGE_TAGS = {
    "cxrdet.git_commit": "code",
    "cxrdet.params_hash": "params",
    "cxrdet.data_hash": "data",
}


def describe_version(name: str, version: str, decision: Decision) -> None:
    """The version's description (the registry page's first line about it): its holdout
    metric against the champion's (the gate's verdict), what it was trained on, and what
    changed since the version before it."""
    current = _version(name, version)
    tags = current.tags
    metric, value = tags.get(METRIC_TAG), score(current)
    shown = "none" if value is None else f"{value:.4f}"
    lines = [
        f"Holdout {metric} {shown}. Against the champion: {decision.reason}.",
        f"Data hash {tags.get('cxrdet.data_hash')}, params hash {tags.get('cxrdet.params_hash')}, "
        f"commit {str(tags.get('cxrdet.git_commit'))[:12]}, detectors: "
        f"{tags.get('cxrdet.detectors')}.",
        f"Changed since the previous version: {changes(name, current)}.",
    ]
    client().update_model_version(name, version, description="\n\n".join(lines))


def changes(name: str, current: Any) -> str:
    """What differs between `current` and the version before it (code, params, data)."""
    earlier = [
        v
        for v in client().search_model_versions(f"name = '{name}'")
        if int(v.version) < int(current.version)
    ]
    if not earlier:
        return "nothing (the first version)"
    previous = max(earlier, key=lambda v: int(v.version))
    changed = [
        what for tag, what in CHANGE_TAGS.items() if current.tags.get(tag) != previous.tags.get(tag)
    ]
    if not changed:
        return f"nothing since version {previous.version} (the same code, params and data)"
    return f"{', '.join(changed)} (against version {previous.version})"


def describe_model(name: str) -> None:
    """The registered model's description: which version each alias points to now (the
    registry's list shows one alias per model; the description shows them all)."""
    aliases = _registered(name).aliases
    held = ", ".join(f"{alias}: version {version}" for alias, version in sorted(aliases.items()))
    client().update_registered_model(
        name,
        description=(
            f"The cxrdet ensemble (classifiers, detectors, tuned recipe, preprocessing) as one "
            f"pyfunc model. Aliases now: {held or 'none'}. Load `models:/{name}@{CHAMPION}`; "
            f"`cxrdet registry list` shows every version's holdout metrics and gate decisions."
        ),
    )


def _safe(name: str) -> str:
    """A registered model name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def champion_history(name: str) -> list[str]:
    text = _registered(name).tags.get(HISTORY_TAG, "")
    return [v for v in text.split(",") if v]


def rollback(name: str) -> tuple[str, str]:
    """Move `champion` back to the version that held it before the current one; returns
    (from, to). The current champion's entry leaves the history, so rolling back again
    goes one further back."""
    with champion_lock(name):
        current = champion(name)
        if current is None:
            raise CxrdetError(f"{name}: no champion to roll back")
        history = champion_history(name)
        while history and history[-1] == str(current.version):
            history.pop()
        if not history:
            raise CxrdetError(
                f"{name}: version {current.version} is the only champion there has been; nothing "
                "to roll back to"
            )
        previous = history[-1]
        _version(name, previous)
        client().set_registered_model_alias(name, CHAMPION, previous)
        client().set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        client().set_model_version_tag(
            name,
            previous,
            GATE_TAG,
            f"{stamp} champion again: rollback from version {current.version}",
        )
        describe_model(name)
        return str(current.version), previous


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of `name`, newest first: version, aliases, gate metric and score,
    the other holdout metrics, identity tags and the last gate decision."""
    registered = _registered(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in registered.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in client().search_model_versions(f"name = '{name}'"):
        tags = version.tags
        rows.append(
            {
                "version": int(version.version),
                "aliases": sorted(aliases.get(str(version.version), [])),
                "metric": tags.get(METRIC_TAG),
                "score": score(version),
                "metrics": {
                    k[len(METRIC_PREFIX) :]: float(v)
                    for k, v in tags.items()
                    if k.startswith(METRIC_PREFIX)
                },
                "created": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(version.creation_timestamp / 1000)
                ),
                "tags": {
                    k: v
                    for k, v in tags.items()
                    if k.startswith("cxrdet.") and k not in (METRIC_TAG, GATE_TAG)
                },
                "gate": tags.get(GATE_TAG),
            }
        )
    return sorted(rows, key=lambda row: -row["version"])


def resolve(uri: str) -> tuple[str, str | None]:
    """(`models:/<name>/<version>`, a note saying which version the alias meant) for an
    alias URI `models:/<name>@<alias>`; any other URI as it is, without a note."""
    match = ALIAS_URI.match(uri)
    if match is None:
        return uri, None
    name, alias = match["name"], match["alias"]
    aliases = _registered(name).aliases
    if alias not in aliases:
        raise CxrdetError(
            f"{uri}: {name} has no alias {alias!r} (aliases: {dict(aliases) or 'none'})"
        )
    version = str(aliases[alias])
    return f"models:/{name}/{version}", f"{uri} -> version {version}"


def _registered(name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client().get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        import mlflow

        raise CxrdetError(
            f"no registered model {name!r} in {mlflow.get_tracking_uri()}; run `dvc repro "
            "register` first"
        ) from None


def _version(name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    _registered(name)
    try:
        return client().get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise CxrdetError(f"{name} has no version {version}") from None

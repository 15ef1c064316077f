"""requirements.lock is the environment: every distribution that cxrdet and its `test` extra
need, transitively, is pinned there, and the venv `make setup` built holds exactly those
versions (a dependency added to pyproject.toml without `make lock` fails here, naming it)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)$")


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, (
            f"requirements.lock line {number}: {line!r} is not an exact `name==version` pin"
        )
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def needed(root: str, extras: set[str]) -> set[str]:
    """Names of the distributions `root[extras]` needs, transitively, on this platform (`root`
    itself excluded: it is the editable project)."""
    walked: dict[str, set[str]] = {}  # distribution -> the extras already followed
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            markers = [{"extra": extra} for extra in wanted or {""}]
            if requirement.marker and not any(requirement.marker.evaluate(m) for m in markers):
                continue
            key = canonicalize_name(requirement.name)
            new_extras = set(requirement.extras) - walked.get(key, set())
            if key in walked and not new_extras:
                continue
            walked.setdefault(key, set()).update(requirement.extras)
            todo.append((requirement.name, set(requirement.extras)))
    walked.pop(canonicalize_name(root), None)
    return set(walked)


def test_lock_pins_every_dependency_at_the_installed_version():
    pins = locked()
    closure = needed("cxrdet", {"test"})
    missing = sorted(closure - set(pins))
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    # Public versions: a local build label (torch 2.14.1+cpu) satisfies the pin 2.14.1.
    drift = {
        name: (pins[name], metadata.version(name))
        for name in closure
        if Version(metadata.version(name)).public != Version(pins[name]).public
    }
    assert not drift, f"installed version differs from requirements.lock (lock, installed): {drift}"

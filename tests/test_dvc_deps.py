"""dvc.yaml's code deps are each stage's import closure, exactly: a change to a source file
reruns every stage that can run it and no other. `python tests/test_dvc_deps.py` writes the
lists into dvc.yaml from the imports; the tests check them. Stage inputs and outputs are
named once in cxrdet.paths, with the paths dvc.yaml uses."""

from __future__ import annotations

import shlex

import pytest
import yaml

import cxrdet.paths

from import_graph import ROOT, source_closure

NOT_DVC_PATHS = {"CHECKPOINTS"}  # cxrdet.paths names that are no stage's input or output
# Files a stage reads as files rather than imports: register logs the pyfunc model from code.
EXTRA = {"register": ["src/cxrdet/serving/model_code.py"]}


def stage_script(cmd: str) -> str:
    """pipelines/<stage>.py of a stage's `python pipelines/<stage>.py ...` command."""
    return next(word for word in shlex.split(cmd) if word.startswith("pipelines/"))


def stages() -> dict[str, dict]:
    document = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return {name: stage.get("do", stage) for name, stage in document["stages"].items()}


def expected_sources(name: str, stage: dict) -> set[str]:
    closure = source_closure(ROOT / stage_script(stage["cmd"]))
    return {path.relative_to(ROOT).as_posix() for path in closure} | set(EXTRA.get(name, ()))


@pytest.mark.parametrize("name", list(stages()))
def test_stage_depends_on_exactly_the_code_it_imports(name: str) -> None:
    stage = stages()[name]
    declared = {dep for dep in stage["deps"] if dep.startswith("src/")}
    expected = expected_sources(name, stage)
    assert stage_script(stage["cmd"]) in stage["deps"]
    assert declared == expected, (
        f"dvc.yaml stage {name}: missing {sorted(expected - declared)}, "
        f"not imported {sorted(declared - expected)}"
    )


def test_every_stage_path_is_one_dvc_yaml_names() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    named = {
        key: value
        for key, value in vars(cxrdet.paths).items()
        if key.isupper() and isinstance(value, str) and key not in NOT_DVC_PATHS
    }
    assert named and all(value in text for value in named.values()), [
        key for key, value in named.items() if value not in text
    ]


def write_deps() -> None:
    """Replace every stage's src/ deps in dvc.yaml by its import closure (comments kept)."""
    from ruamel.yaml import YAML

    document = YAML()
    document.width = 200
    document.indent(mapping=2, sequence=4, offset=2)
    path = ROOT / "dvc.yaml"
    content = document.load(path)
    for name, stage in content["stages"].items():
        body = stage.get("do", stage)
        deps = body["deps"]  # edited in place: the other deps keep their comments
        for index in reversed(range(len(deps))):
            if str(deps[index]).startswith("src/"):
                del deps[index]
        for source in sorted(expected_sources(name, body), reverse=True):
            deps.insert(1, source)  # after the script
    document.dump(content, path)


if __name__ == "__main__":
    write_deps()

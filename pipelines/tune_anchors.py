"""DVC stage `tune_anchors` (dvc.yaml): its flow is cxrdet.stages.tune_anchors.run;
this script only parses its arguments and calls it."""

from __future__ import annotations

from cxrdet.errors import exit_code_of
from cxrdet.paths import project_root
from cxrdet.stages import tune_anchors as stage


def main() -> None:
    stage.run(project_root())


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "tune_anchors"))

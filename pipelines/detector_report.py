"""DVC stage `detector_report` (dvc.yaml): its flow is cxrdet.stages.detector_report.run;
this script only parses its arguments and calls it."""

from __future__ import annotations

from cxrdet.errors import exit_code_of
from cxrdet.paths import project_root
from cxrdet.stages import detector_report as stage


def main() -> None:
    stage.run(project_root())


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "detector_report"))

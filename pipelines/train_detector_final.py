"""DVC stage `train_detector_final` (dvc.yaml): its flow is cxrdet.stages.train_detector_final.run;
this script only parses its arguments and calls it."""

from __future__ import annotations

from cxrdet.errors import exit_code_of
from cxrdet.paths import project_root
from cxrdet.stages import train_detector_final as stage


def main() -> None:
    stage.run(project_root())


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "train_detector_final"))

"""DVC stage `train_classifier` (dvc.yaml): its flow is cxrdet.stages.train_classifier.run;
this script only parses its arguments and calls it."""

from __future__ import annotations

import argparse

from cxrdet.errors import exit_code_of
from cxrdet.paths import project_root
from cxrdet.stages import train_classifier as stage


def main() -> None:
    parser = argparse.ArgumentParser(description=stage.__doc__)
    parser.add_argument(
        "--fold", type=int, required=True, help="one of params.yaml classifier.folds"
    )
    stage.run(project_root(), parser.parse_args().fold)


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "train_classifier"))

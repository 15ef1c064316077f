"""DVC stage `prepare` (dvc.yaml): its flow is cxrdet.stages.prepare.run; this script only parses
its arguments and calls it."""

from __future__ import annotations

import argparse

from cxrdet.errors import exit_code_of
from cxrdet.paths import project_root
from cxrdet.stages import prepare as stage


def main() -> None:
    parser = argparse.ArgumentParser(description=stage.__doc__)
    parser.add_argument("--dataset", required=True, help="a key of params.yaml `data`")
    stage.run(project_root(), parser.parse_args().dataset)


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "prepare"))

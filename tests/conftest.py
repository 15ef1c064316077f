"""Shared fixtures: a small synthetic demo written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic RSNA/VinBigData/NIH/folder data, small enough for unit tests."""
    from cxrdet.data.sources.synthetic import DemoSpec, synthesize

    out = tmp_path_factory.mktemp("demo_raw")
    spec = DemoSpec(
        seed=7, image_size=128, rsna_images=40, vinbigdata_images=12, nih_images=24, folder_images=8
    )
    synthesize(out, spec, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The demo pipeline run once per session (`dvc repro` in a fresh clone of the working
    tree) for every slow test that reads its outputs: (clone root, its environment)."""
    from worktree import demo_clone

    return demo_clone(ROOT, tmp_path_factory.mktemp("clone"))

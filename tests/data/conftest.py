"""Fixtures of the data tests: one small synthetic dataset, generated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pnoc.data.synthetic import generate_synthetic

SMALL = dict(num_train=12, num_val=4, num_classes=6, image_size=64, seed=3)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only 12+4 image, 64 px, 6-class synthetic dataset (do not modify it)."""
    root = tmp_path_factory.mktemp("synthetic") / "ds"
    generate_synthetic(root, **SMALL)
    return root


@pytest.fixture
def voc_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset that a test may corrupt."""
    dst = tmp_path / "voc"
    shutil.copytree(synthetic_root, dst)
    return dst

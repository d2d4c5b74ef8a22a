"""Fixtures of the saliency tests: a fake reader, a tiny synthetic dataset with CAMs, a context."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pnoc.cam.inference import save_cam_npz
from pnoc.data.base import Sample
from pnoc.data.synthetic import generate_synthetic
from pnoc.data.voc import VOCDataset


class FakeReader:
    """A reader holding images in memory (the part of the reader API HintSet uses)."""

    def __init__(self, images: list[np.ndarray], ids: list[str] | None = None) -> None:
        self.images = images
        self.ids = ids or [f"img{i}" for i in range(len(images))]
        self.num_classes = 2

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int, *, mask: bool = True) -> Sample:
        return Sample(self.ids[index], self.images[index], np.array([1.0, 0.0], np.float32))


@pytest.fixture
def fake_reader() -> type[FakeReader]:
    return FakeReader


def write_cams_from_masks(dataset: VOCDataset, cam_dir: Path) -> None:
    """CAM records that are the ground-truth masks of the present classes (ignore -> 0)."""
    for image_id in dataset.ids:
        mask = dataset.load_mask(image_id)
        assert mask is not None
        classes = np.array([c for c in np.unique(mask) if 0 < c < 255], dtype=np.int64)
        cams = (
            np.stack([(mask == c).astype(np.float32) for c in classes])
            if len(classes)
            else (np.zeros((0, *mask.shape), np.float32))
        )
        save_cam_npz(cam_dir / f"{image_id}.npz", cams, classes)


@pytest.fixture(scope="session")
def synthetic_with_cams(tmp_path_factory: pytest.TempPathFactory) -> tuple[VOCDataset, Path]:
    """A 6-image 32 px 3-class synthetic train split and a CAM folder made from its masks."""
    base = tmp_path_factory.mktemp("saliency")
    generate_synthetic(base / "ds", num_train=6, num_val=1, num_classes=3, image_size=32, seed=0)
    dataset = VOCDataset(base / "ds", "train")
    write_cams_from_masks(dataset, base / "cams")
    return dataset, base / "cams"


@dataclass
class GradContext:
    """Minimal TrainContext: backpropagates, records loss/terms/gradients, never steps."""

    device: torch.device = torch.device("cpu")
    progress: float = 0.0
    updates: list[dict[str, Any]] = field(default_factory=list)
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def update(self, optimizer: str, loss: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        loss.backward()
        grads = {
            n: p.grad.detach().clone()
            for n, p in self.modules[optimizer].named_parameters()
            if p.grad is not None
        }
        self.updates.append(
            {
                "optimizer": optimizer,
                "loss": float(loss.detach()),
                "terms": {k: float(v.detach()) for k, v in (terms or {}).items()},
                "grads": grads,
            }
        )
        self.modules[optimizer].zero_grad(set_to_none=True)


@pytest.fixture
def grad_context() -> type[GradContext]:
    return GradContext

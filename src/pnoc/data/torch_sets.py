"""``torch.utils.data.Dataset`` views of a reader, whose items are dicts of tensors.

:class:`ClassificationSet` serves images and image-level labels (CAM classifiers);
:class:`SegmentationSet` adds class-index masks (affinity, segmentation); :func:`collate`
batches the items of either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnoc.data.base import Sample, SampleKey, key_index
from pnoc.data.files import check_mask_values, read_mask
from pnoc.data.reader import ImageLabelDataset
from pnoc.data.transforms import eval_transform, to_tensor_image, to_tensor_mask
from pnoc.errors import DatasetError

_CLASS_NOISE_STREAM = 1  # SeedSequence([seed, 1]): independent of the augmentation's stream


class ClassificationSet(torch.utils.data.Dataset):
    """Image-level view of a reader for CAM classifiers.

    Items (for an int or :class:`SampleKey`): ``image`` float32 3×H×W (normalised),
    ``labels`` float32 (K,), ``class_noise`` float32 (K,) uniform in [0, 1) (the draw of the
    class an adversarial CAM method erases, :func:`pnoc.cam.losses.sample_present_class`),
    ``id`` str, ``index`` int. The transform receives ``np.random.default_rng(key.seed)`` (a plain
    int i uses seed i); ``class_noise`` comes from an independent stream of the same seed.
    Masks are not decoded.
    """

    def __init__(
        self, dataset: ImageLabelDataset, transform: Callable[..., Any] | None = None
    ) -> None:
        self.dataset = dataset
        self.transform = transform if transform is not None else eval_transform()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = key_index(key)
        sample = self.dataset.get(index, mask=False)
        image, _ = self.transform(sample.image, None, np.random.default_rng(seed))
        noise = np.random.default_rng([seed, _CLASS_NOISE_STREAM]).random(len(sample.labels))
        return {
            "image": to_tensor_image(image),
            "labels": torch.from_numpy(sample.labels),
            "class_noise": torch.from_numpy(noise.astype(np.float32)),
            "id": sample.id,
            "index": index,
        }


class SegmentationSet(torch.utils.data.Dataset):
    """Dense view of a reader: like :class:`ClassificationSet` plus ``mask`` int64 H×W.

    ``mask_dir`` reads masks from ``<mask_dir>/<id>.png`` instead of the dataset's own (e.g.
    pseudo-masks); they are checked like dataset masks. A sample without a mask raises.
    """

    def __init__(
        self,
        dataset: ImageLabelDataset,
        transform: Callable[..., Any] | None = None,
        *,
        mask_dir: str | Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform if transform is not None else eval_transform()
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _mask(self, sample: Sample) -> tuple[np.ndarray, Path]:
        if self.mask_dir is not None:
            path = self.mask_dir / f"{sample.id}.png"
            mask = read_mask(path)
            check_mask_values(path, mask, self.dataset.num_classes)
            return mask, path
        path = self.dataset.mask_path(sample.id)
        if sample.mask is None:
            raise DatasetError(path, f"id '{sample.id}' has no segmentation mask")
        return sample.mask, path

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = key_index(key)
        sample = self.dataset.get(index, mask=self.mask_dir is None)
        mask, path = self._mask(sample)
        if mask.shape != sample.image.shape[:2]:
            raise DatasetError(
                path,
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                f"{sample.image.shape[1]}x{sample.image.shape[0]}",
            )
        image, mask = self.transform(sample.image, mask, np.random.default_rng(seed))
        return {
            "image": to_tensor_image(image),
            "mask": to_tensor_mask(mask),
            "labels": torch.from_numpy(sample.labels),
            "id": sample.id,
            "index": index,
        }


def collate(batch: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of a list of items; ``id`` stays a list of str, ``index`` an int64 tensor."""
    items = list(batch)
    if not items:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif key == "index":
            out[key] = torch.as_tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out

"""Deterministic generator of a small VOC-format dataset with the failure modes of WSSS.

What makes it hard in the way P-NOC's target data is hard:

- **Discriminative mark on a shared body.** Every class is a *body* with a class-specific
  silhouette (circle, square, triangle, ...; diameter ``body_size``, by default 25–45 % of the
  image side) whose texture and colour are the same for all classes, carrying a small *mark*
  (``mark_area``, by default 10–15 % of the body's area, at a random place inside it) in a
  saturated class-specific colour and pattern. The mark alone identifies the class, so a plain
  CAM classifier fires on the mark and misses the body.
- **Co-occurrence bias.** Each class owns a background texture; with probability
  ``cooccurrence`` (default 0.2) the image background is the texture of one of its present
  classes (else any texture of the pool, which also holds 4 neutral ones, so a present class's
  texture still turns up more often than chance), and CAMs leak into the context. Set high
  (0.7), the texture becomes an easier cue than the mark and a from-scratch or lightly tuned
  classifier localises backgrounds instead of objects.
- **Clutter.** 1–3 objects (classes drawn with repetition), random scale and rotation,
  partial occlusion (later objects on top; the mask shows visible pixels; every object keeps
  ≥ 55 % of its area and ≥ 50 % of its mark visible), 0–2 distractor blobs of no class
  (body-like texture, tinted, labelled background), Gaussian noise and brightness jitter.
- **VOC-style ignore band**: a 1 or 2 px band of 255 on every object boundary.

Determinism: image ``index`` of ``split`` draws from
``np.random.default_rng([seed, split_code, index])``; textures and marks are a fixed function
of the class index (the same "world" for any seed). JPEG (quality 95) and PNG encodings and
the XML text hold no timestamps, so equal arguments give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pnoc.data.base import IGNORE_INDEX
from pnoc.data.files import encode_mask_png
from pnoc.data.synthetic_scene import (
    BODY_SIZE,
    COOCCURRENCE_PROB,
    MARK_AREA,
    SceneObject,
    render_scene,
)
from pnoc.data.synthetic_shapes import CLASS_NAMES, MAX_CLASSES
from pnoc.errors import ConfigError
from pnoc.io import atomic_path

__all__ = ["CLASS_NAMES", "SyntheticStats", "generate_synthetic", "render_scene"]

MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 95


def _annotation_xml(image_id: str, size: int, objects: Sequence[SceneObject]) -> str:
    """VOC annotation XML text (no dates, fixed formatting: deterministic)."""
    lines = [
        "<annotation>",
        "\t<folder>pnoc-synthetic</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>pnoc synthetic</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{size}</width>",
        f"\t\t<height>{size}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for o in objects:
        xmin, ymin, xmax, ymax = o.bbox
        lines += [
            "\t<object>",
            f"\t\t<name>{o.name}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(o.truncated)}</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# --- public API ---------------------------------------------------------------------------------


@dataclass
class SyntheticStats:
    """Summary of a generated dataset (JSON-ready through :meth:`to_dict`)."""

    image_size: int
    seed: int
    class_names: list[str]  # foreground only
    num_images: dict[str, int] = field(default_factory=dict)  # split → count
    class_image_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split → class → n
    mean_objects_per_image: float = 0.0
    mean_distractors_per_image: float = 0.0
    foreground_fraction: float = 0.0  # pixels labelled with a class (band excluded)
    ignore_fraction: float = 0.0  # pixels labelled 255
    background_bias: float = 0.0  # images whose background is a present class's texture

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_range(name: str, pair: tuple[float, float], what: str) -> None:
    lo, hi = pair
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(
            f"{name} must be [low, high] with 0 < low <= high <= 1 ({what}), got {list(pair)}"
        )


def _check_args(
    num_train: int,
    num_val: int,
    num_classes: int,
    image_size: int,
    seed: int,
    cooccurrence: float,
    body_size: tuple[float, float],
    mark_area: tuple[float, float],
) -> None:
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= cooccurrence <= 1.0:
        raise ConfigError(f"cooccurrence must be a probability in [0, 1], got {cooccurrence}")
    _check_range("body_size", body_size, "body diameter as a fraction of the image side")
    _check_range("mark_area", mark_area, "mark area as a fraction of the body's area")


def generate_synthetic(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    num_classes: int,
    image_size: int,
    seed: int,
    cooccurrence: float = COOCCURRENCE_PROB,
    body_size: tuple[float, float] = BODY_SIZE,
    mark_area: tuple[float, float] = MARK_AREA,
) -> SyntheticStats:
    """Write the dataset to ``root`` (replacing it) and return its statistics.

    Everything is written into a temporary sibling folder renamed onto ``root`` at the end,
    so an interrupted run never leaves a partial dataset. Image ids are ``<split>_<index:05d>``.
    """
    _check_args(
        num_train, num_val, num_classes, image_size, seed, cooccurrence, body_size, mark_area
    )
    names = list(CLASS_NAMES[:num_classes])
    stats = SyntheticStats(image_size=image_size, seed=seed, class_names=names)
    n_images = n_objects = n_distractors = n_bias = 0
    fg_pixels = ignore_pixels = 0
    with atomic_path(root) as tmp:
        dirs = {
            d: tmp / d
            for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation")
        }
        for d in dirs.values():
            d.mkdir(parents=True)
        for split, count in (("train", num_train), ("val", num_val)):
            ids = []
            per_class = dict.fromkeys(names, 0)
            for index in range(count):
                image_id = f"{split}_{index:05d}"
                scene = render_scene(
                    seed, split, index, num_classes, image_size, cooccurrence, body_size, mark_area
                )
                Image.fromarray(scene.image).save(
                    dirs["JPEGImages"] / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY
                )
                (dirs["SegmentationClass"] / f"{image_id}.png").write_bytes(
                    encode_mask_png(scene.mask)
                )
                (dirs["Annotations"] / f"{image_id}.xml").write_text(
                    _annotation_xml(image_id, image_size, scene.objects), encoding="utf-8"
                )
                ids.append(image_id)
                for name in {o.name for o in scene.objects}:
                    per_class[name] += 1
                n_images += 1
                n_objects += len(scene.objects)
                n_distractors += scene.num_distractors
                n_bias += scene.background_from_class
                fg_pixels += int(np.count_nonzero((scene.mask > 0) & (scene.mask < IGNORE_INDEX)))
                ignore_pixels += int(np.count_nonzero(scene.mask == IGNORE_INDEX))
            (dirs["ImageSets/Segmentation"] / f"{split}.txt").write_text(
                "".join(f"{i}\n" for i in ids), encoding="utf-8"
            )
            stats.num_images[split] = count
            stats.class_image_counts[split] = per_class
        (tmp / "class_names.txt").write_text(
            "".join(f"{n}\n" for n in ["background", *names]), encoding="utf-8"
        )
    total_pixels = n_images * image_size * image_size
    stats.mean_objects_per_image = n_objects / n_images
    stats.mean_distractors_per_image = n_distractors / n_images
    stats.foreground_fraction = fg_pixels / total_pixels
    stats.ignore_fraction = ignore_pixels / total_pixels
    stats.background_bias = n_bias / n_images
    return stats

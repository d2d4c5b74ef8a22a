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

Image size: square ``image_size`` by default, or ``shape=(width, height)`` (e.g. VOC-like
500×375); object and distractor sizes are fractions of the shorter side.

Layouts (``layout``):

- ``voc`` (default): the Pascal VOC 2012 layout that :class:`~pnoc.data.voc.VOCDataset`
  reads: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (VOC palette, 255 band),
  ``Annotations/<id>.xml``, ``ImageSets/Segmentation/{train,val}.txt``, ``class_names.txt``.
  Ids are ``<split>_<index:05d>``.
- ``voc_sbd``: the same, but like real VOC only the first half (rounded up) of the train
  images has a ``SegmentationClass`` PNG and is listed in ``ImageSets/Segmentation/train.txt``;
  every train image has its mask in an SBD release folder ``SBD/dataset/``:
  ``cls/<id>.mat`` (a ``GTcls`` struct with ``Segmentation``, H×W uint8 class indices without
  the ignore band, as SBD's, and ``CategoriesPresent``, a uint8 column of the classes present)
  and the lists ``train.txt`` / ``val.txt`` (SBD's own split of those ids: every 4th train id,
  index % 4 == 3, is in ``val.txt``, the others in ``train.txt``). JPEGs and XMLs exist for
  every id.
- ``coco``: the COCO 2014 layout that :class:`~pnoc.data.coco.COCODataset` reads:
  ``train2014/COCO_train2014_<id:012d>.jpg``, ``val2014/COCO_val2014_<id:012d>.jpg`` (image
  ids ``index + 1`` for train, ``1000000 + index + 1`` for val) and
  ``annotations/instances_{train,val}2014.json``. Class k is COCO category
  :data:`COCO_CATEGORIES` [k] (every 4th of COCO's 80, real ids and names, so the ids have
  gaps). Each object's visible pixels are one annotation (compressed RLE, with area and
  bbox); object 0 (the bottom-most) of every image with index % 5 == 1 is a crowd region
  instead (``iscrowd: 1``, uncompressed RLE, as COCO's crowds), which the reader paints
  255. No ignore band: away from it (and from crowds) the reader's masks equal the VOC masks.

Determinism: image ``index`` of ``split`` draws from
``np.random.default_rng([seed, split_code, index])``; textures and marks are a fixed function
of the class index (the same "world" for any seed). JPEG (quality 95) and PNG encodings, the XML
and JSON texts and the .mat files (whose header date is replaced by a fixed text) hold no
timestamps, so equal arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from pnoc.data.base import IGNORE_INDEX
from pnoc.data.files import encode_mask_png
from pnoc.data.synthetic_scene import (
    BODY_SIZE,
    COOCCURRENCE_PROB,
    MARK_AREA,
    Scene,
    SceneObject,
    render_scene,
)
from pnoc.data.synthetic_shapes import CLASS_NAMES, MAX_CLASSES
from pnoc.errors import ConfigError
from pnoc.io import atomic_path

__all__ = [
    "CLASS_NAMES",
    "COCO_CATEGORIES",
    "LAYOUTS",
    "SyntheticStats",
    "generate_synthetic",
    "render_scene",
]

MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 95
Layout = Literal["voc", "voc_sbd", "coco"]
LAYOUTS: tuple[str, ...] = ("voc", "voc_sbd", "coco")
SBD_DIR = Path("SBD") / "dataset"
SBD_VAL_EVERY = 4  # train ids with index % 4 == 3 are in SBD's val.txt, the others in train.txt
COCO_VAL_ID_BASE = 1_000_000  # COCO image id of val image i: 1000000 + i + 1 (train: i + 1)
CROWD_EVERY = 5  # COCO layout: object 0 of images with index % 5 == 1 is a crowd region
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by pnoc's synthetic generator (SBD layout)"

#: (id, name, supercategory) of COCO 2014 categories for classes 0..19: every 4th of COCO's
#: 80 categories in id order, so that even a few classes have non-contiguous ids.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (5, "airplane", "vehicle"), (9, "boat", "vehicle"),
    (14, "parking meter", "outdoor"), (18, "dog", "animal"), (22, "elephant", "animal"),
    (27, "backpack", "accessory"), (33, "suitcase", "accessory"),
    (37, "sports ball", "sports"), (41, "skateboard", "sports"),
    (46, "wine glass", "kitchen"), (50, "spoon", "kitchen"), (54, "sandwich", "food"),
    (58, "hot dog", "food"), (62, "chair", "furniture"), (67, "dining table", "furniture"),
    (74, "mouse", "electronic"), (78, "microwave", "appliance"),
    (82, "refrigerator", "appliance"), (87, "scissors", "indoor"),
)  # fmt: skip


def _annotation_xml(image_id: str, width: int, height: int, objects: Sequence[SceneObject]) -> str:
    """VOC annotation XML text (no dates, fixed formatting: deterministic)."""
    lines = [
        "<annotation>",
        "\t<folder>pnoc-synthetic</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>pnoc synthetic</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
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


def _mat_bytes(scene: Scene) -> bytes:
    """SBD ``cls/<id>.mat``: a ``GTcls`` struct (no date in the header: deterministic)."""
    from scipy.io import savemat  # imported lazily: only the voc_sbd layout needs it

    present = np.unique(scene.label)
    present = present[present > 0].astype(np.uint8).reshape(-1, 1)
    gt = {"Segmentation": scene.label.astype(np.uint8), "CategoriesPresent": present}
    buf = io.BytesIO()
    savemat(buf, {"GTcls": gt}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")  # the header's description text holds the date
    return bytes(data)


def _rle_counts(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a bool mask (column-major runs, zeros first)."""
    flat = m.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *counts] if flat.size and flat[0] else counts


def _coco_annotation(
    ann_id: int, image_id: int, category_id: int, m: np.ndarray, crowd: bool
) -> dict[str, Any]:
    from pycocotools import mask as mask_utils  # imported lazily: only the coco layout

    h, w = m.shape
    if crowd:
        segmentation: dict[str, Any] = {"counts": _rle_counts(m), "size": [h, w]}
    else:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    ys, xs = np.nonzero(m)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(np.count_nonzero(m)),
        "bbox": bbox,
        "iscrowd": int(crowd),
    }


class _VOCWriter:
    """VOC layout; with ``sbd``, half the train masks only in an SBD release folder."""

    def __init__(self, root: Path, names: list[str], sbd: bool) -> None:
        self.root, self.names, self.sbd = root, names, sbd
        self.dirs = {
            d: root / d
            for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation")
        }
        if sbd:
            self.dirs["SBD"] = root / SBD_DIR / "cls"
        for d in self.dirs.values():
            d.mkdir(parents=True)
        self.ids: list[str] = []
        self.sbd_lists: dict[str, list[str]] = {"train": [], "val": []}

    def add(self, split: str, index: int, count: int, scene: Scene) -> None:
        image_id = f"{split}_{index:05d}"
        height, width = scene.mask.shape
        Image.fromarray(scene.image).save(
            self.dirs["JPEGImages"] / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY
        )
        (self.dirs["Annotations"] / f"{image_id}.xml").write_text(
            _annotation_xml(image_id, width, height, scene.objects), encoding="utf-8"
        )
        # VOC proper: every image has a PNG; voc_sbd: the first half of train (rounded up).
        if not (self.sbd and split == "train" and index >= (count + 1) // 2):
            (self.dirs["SegmentationClass"] / f"{image_id}.png").write_bytes(
                encode_mask_png(scene.mask)
            )
            self.ids.append(image_id)
        if self.sbd and split == "train":
            (self.dirs["SBD"] / f"{image_id}.mat").write_bytes(_mat_bytes(scene))
            sbd_split = "val" if index % SBD_VAL_EVERY == SBD_VAL_EVERY - 1 else "train"
            self.sbd_lists[sbd_split].append(image_id)

    def end_split(self, split: str) -> None:
        _write_list(self.dirs["ImageSets/Segmentation"] / f"{split}.txt", self.ids)
        self.ids = []

    def finish(self) -> None:
        _write_list(self.root / "class_names.txt", ["background", *self.names])
        if self.sbd:
            for split, ids in self.sbd_lists.items():
                _write_list(self.root / SBD_DIR / f"{split}.txt", ids)


class _COCOWriter:
    """COCO 2014 layout: ``<split>2014/`` images and ``annotations/instances_<split>2014.json``."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.root = root
        self.categories = [
            {"id": cid, "name": name, "supercategory": sup, "synthetic_shape": shape}
            for (cid, name, sup), shape in zip(COCO_CATEGORIES, names, strict=False)
        ]
        (root / "annotations").mkdir(parents=True)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, split: str, index: int, count: int, scene: Scene) -> None:
        folder = self.root / f"{split}2014"
        folder.mkdir(exist_ok=True)
        image_id = index + 1 + (COCO_VAL_ID_BASE if split == "val" else 0)
        file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
        Image.fromarray(scene.image).save(folder / file_name, format="JPEG", quality=JPEG_QUALITY)
        height, width = scene.mask.shape
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
        for j, obj in enumerate(scene.objects):
            crowd = j == 0 and index % CROWD_EVERY == 1
            self.annotations.append(
                _coco_annotation(
                    len(self.annotations) + 1,
                    image_id,
                    self.categories[obj.class_index]["id"],
                    scene.instances == j,
                    crowd,
                )
            )

    def end_split(self, split: str) -> None:
        (self.root / f"{split}2014").mkdir(exist_ok=True)
        doc = {
            "info": {"description": "pnoc synthetic data, COCO 2014 layout", "year": 2014},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        (self.root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8"
        )
        self.images, self.annotations = [], []

    def finish(self) -> None:
        pass


def _write_list(path: Path, items: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in items), encoding="utf-8")


# --- public API ---------------------------------------------------------------------------------


@dataclass
class SyntheticStats:
    """Summary of a generated dataset (JSON-ready through :meth:`to_dict`)."""

    image_size: int
    seed: int
    class_names: list[str]  # foreground only
    width: int = 0  # generated image size (image_size × image_size unless a shape was given)
    height: int = 0
    layout: str = "voc"
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
    shape: tuple[int, int] | None,
    layout: str,
) -> None:
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if shape is None and image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if shape is not None and (len(shape) != 2 or min(shape) < MIN_IMAGE_SIZE):
        raise ConfigError(
            f"shape must be [width, height], each >= {MIN_IMAGE_SIZE}, got {list(shape)}"
        )
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= cooccurrence <= 1.0:
        raise ConfigError(f"cooccurrence must be a probability in [0, 1], got {cooccurrence}")
    _check_range("body_size", body_size, "body diameter as a fraction of the shorter side")
    _check_range("mark_area", mark_area, "mark area as a fraction of the body's area")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")


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
    shape: tuple[int, int] | None = None,
    layout: Layout = "voc",
) -> SyntheticStats:
    """Write the dataset to ``root`` (replacing it) and return its statistics.

    Images are ``image_size`` square, or ``shape`` = (width, height) when given (object sizes
    scale with the shorter side). ``layout`` is ``voc``, ``voc_sbd`` or ``coco`` (see the module
    docstring). Everything is written into a temporary sibling folder renamed onto ``root`` at
    the end, so an interrupted run never leaves a partial dataset.
    """
    _check_args(
        num_train,
        num_val,
        num_classes,
        image_size,
        seed,
        cooccurrence,
        body_size,
        mark_area,
        shape,
        layout,
    )
    width, height = (image_size, image_size) if shape is None else (int(shape[0]), int(shape[1]))
    names = list(CLASS_NAMES[:num_classes])
    stats = SyntheticStats(
        image_size=image_size,
        seed=seed,
        class_names=names,
        width=width,
        height=height,
        layout=layout,
    )
    n_images = n_objects = n_distractors = n_bias = 0
    fg_pixels = ignore_pixels = 0
    with atomic_path(root) as tmp:
        writer = (
            _COCOWriter(tmp, names)
            if layout == "coco"
            else _VOCWriter(tmp, names, layout == "voc_sbd")
        )
        for split, count in (("train", num_train), ("val", num_val)):
            per_class = dict.fromkeys(names, 0)
            for index in range(count):
                scene = render_scene(
                    seed,
                    split,
                    index,
                    num_classes,
                    (width, height),
                    cooccurrence,
                    body_size,
                    mark_area,
                )
                writer.add(split, index, count, scene)
                for name in {o.name for o in scene.objects}:
                    per_class[name] += 1
                n_images += 1
                n_objects += len(scene.objects)
                n_distractors += scene.num_distractors
                n_bias += scene.background_from_class
                fg_pixels += int(np.count_nonzero((scene.mask > 0) & (scene.mask < IGNORE_INDEX)))
                ignore_pixels += int(np.count_nonzero(scene.mask == IGNORE_INDEX))
            writer.end_split(split)
            stats.num_images[split] = count
            stats.class_image_counts[split] = per_class
        writer.finish()
    total_pixels = n_images * width * height
    stats.mean_objects_per_image = n_objects / n_images
    stats.mean_distractors_per_image = n_distractors / n_images
    stats.foreground_fraction = fg_pixels / total_pixels
    stats.ignore_fraction = ignore_pixels / total_pixels
    stats.background_bias = n_bias / n_images
    return stats

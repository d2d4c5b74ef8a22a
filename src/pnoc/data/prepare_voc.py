"""Find or build VOC's ``train_aug`` split: ``SegmentationClassAug`` from the SBD release.

The SBD release (``benchmark_RELEASE/dataset``) holds ``cls/<id>.mat`` (a struct ``GTcls``
whose ``Segmentation`` field is the H×W class-index mask, 0..20, without VOC's 255 border),
``train.txt`` (8,498 ids) and ``val.txt`` (2,857). It goes into the VOC root as ``SBD/``:
``SBD/`` may hold the ``dataset`` folder's contents, the ``dataset`` folder itself, or the whole
``benchmark_RELEASE`` folder (:func:`find_sbd`).

The usual convention (DeepLab, IRN):

- ``train_aug`` = (SBD train ∪ SBD val ∪ VOC train) − VOC val: 10,582 ids for VOC 2012;
- the mask of an id is its VOC ``SegmentationClass`` PNG when VOC has one (copied as it is,
  255 border included), else the SBD mask (written as a VOC palette PNG).

:func:`plan_voc` checks everything and decides what to do without writing anything;
:func:`write_voc` then writes ``SegmentationClassAug/`` (built in a temporary folder, renamed
when complete) and ``ImageSets/SegmentationAug/train_aug.txt`` to the output folder. A VOC root
that already holds ``SegmentationClassAug/`` and ``ImageSets/SegmentationAug/train_aug.txt`` is
checked and used in place: nothing is copied (:class:`~pnoc.data.voc.VOCDataset` looks for them
in the output folder first, then in the root).

**Split counts.** When the root is the real Pascal VOC 2012 (:func:`is_voc2012`: no
``class_names.txt``, and the 17,125 JPEGs of the trainval release or its 11,540-id
``ImageSets/Main/trainval.txt``), ``ImageSets/Segmentation/train.txt`` and ``val.txt`` must list
1,464 and 1,449 ids and ``train_aug`` 10,582; the first count that differs stops the
preparation, naming the list. Other VOC-layout folders (custom data, generated stand-ins) are
not held to these figures.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.data.files import (
    check_mask_values,
    list_dir,
    read_class_names,
    read_id_list,
    read_mask,
    write_mask_png,
)
from pnoc.data.prepared import parallel_map
from pnoc.data.voc import (
    AUG_LIST_DIR,
    AUG_MASK_DIR,
    SBD_DIR,
    TRAIN_AUG,
    VOC_CLASSES,
    train_aug_missing,
)
from pnoc.errors import DatasetError
from pnoc.io import atomic_path, write_text

log = logging.getLogger(__name__)

#: Pascal VOC 2012 figures: segmentation split sizes, train_aug, JPEGs and Main/trainval ids of
#: the trainval release.
VOC2012_SPLITS = {"train": 1464, "val": 1449}
VOC2012_TRAIN_AUG = 10582
VOC2012_JPEGS = 17125
VOC2012_MAIN_TRAINVAL = 11540
#: SBD release split sizes (reported in errors, not enforced).
SBD_SPLITS = {"train": 8498, "val": 2857}


def find_sbd(root: str | Path) -> Path | None:
    """The SBD ``dataset`` folder under ``root/SBD`` (it, ``dataset/`` or
    ``benchmark_RELEASE/dataset/`` in it, whichever holds ``cls/``), or None without ``SBD/``."""
    base = Path(root) / SBD_DIR
    if not base.is_dir():
        return None
    for candidate in (base, base / "dataset", base / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise DatasetError(
        base,
        "holds no cls/ folder: expected the SBD release's benchmark_RELEASE/dataset "
        "(cls/*.mat, train.txt, val.txt) here, as SBD/, SBD/dataset/ or "
        "SBD/benchmark_RELEASE/dataset/",
    )


def is_voc2012(root: str | Path) -> str | None:
    """Why ``root`` is taken for the real Pascal VOC 2012 (then its split counts are checked),
    or None: no ``class_names.txt`` and the trainval release's 17,125 JPEGs or 11,540-id
    ``ImageSets/Main/trainval.txt``."""
    root = Path(root)
    if (root / "class_names.txt").is_file():
        return None
    jpegs = sum(1 for n in list_dir(root / "JPEGImages") if n.endswith(".jpg"))
    if jpegs >= VOC2012_JPEGS:
        return f"it holds {jpegs:,} JPEGs, as the VOC 2012 trainval release ({VOC2012_JPEGS:,})"
    main = root / "ImageSets" / "Main" / "trainval.txt"
    if main.is_file() and len(read_id_list(main, "Main/trainval")) == VOC2012_MAIN_TRAINVAL:
        return f"its ImageSets/Main/trainval.txt lists VOC 2012's {VOC2012_MAIN_TRAINVAL:,} ids"
    return None


@dataclass
class VOCPlan:
    """What :func:`write_voc` does: ``source`` is ``"sbd"`` (build), ``"root"`` (found in the
    root: nothing to write) or None (no train_aug)."""

    root: Path
    source: str | None
    num_classes: int
    ids: list[str] = field(default_factory=list)
    masks: dict[str, Path] = field(default_factory=dict)  # id -> VOC PNG or SBD .mat
    voc2012: str | None = None  # why the split counts were checked, when they were

    def summary(self) -> dict[str, Any]:
        from_sbd = sum(1 for p in self.masks.values() if p.suffix == ".mat")
        return {
            "train_aug": self.source,
            "train_aug_images": len(self.ids),
            "from_sbd": from_sbd,
            "from_voc": len(self.masks) - from_sbd,
            "voc2012_counts_checked": self.voc2012 is not None,
        }


def _count_error(path: Path, what: str, found: int, expected: int, why: str) -> DatasetError:
    return DatasetError(
        path,
        f"{what} has {found:,} ids, but Pascal VOC 2012's has {expected:,} (the folder is taken "
        f"for VOC 2012 because {why}); the download is incomplete or another release",
    )


def plan_voc(root: str | Path, splits: Sequence[str] = ("train", "val")) -> VOCPlan:
    """Check a VOC-layout root and decide how its ``train_aug`` is had; write nothing.

    Raises :class:`DatasetError` naming the file at fault: a VOC 2012 split count that differs,
    a missing SBD mask or JPEG, a ``train_aug`` asked for (in ``splits``) that neither the root
    nor an SBD release gives.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root folder does not exist")
    names = (
        read_class_names(root / "class_names.txt")
        if (root / "class_names.txt").is_file()
        else list(VOC_CLASSES)
    )
    plan = VOCPlan(root=root, source=None, num_classes=len(names) - 1, voc2012=is_voc2012(root))
    seg = root / "ImageSets" / "Segmentation"
    if plan.voc2012:
        for split, expected in VOC2012_SPLITS.items():
            n = len(read_id_list(seg / f"{split}.txt", split))
            if n != expected:
                raise _count_error(
                    seg / f"{split}.txt", f"split '{split}'", n, expected, plan.voc2012
                )

    found_list = root / AUG_LIST_DIR / f"{TRAIN_AUG}.txt"
    if (root / AUG_MASK_DIR).is_dir() and found_list.is_file():
        plan.source = "root"
        plan.ids = read_id_list(found_list, TRAIN_AUG)
        if (root / SBD_DIR).exists():
            log.info(
                "%s holds %s and train_aug.txt: used as they are, SBD ignored", root, AUG_MASK_DIR
            )
        _check_count(plan, found_list)
        have = list_dir(root / AUG_MASK_DIR)
        missing = [i for i in plan.ids if f"{i}.png" not in have]
        if missing:
            raise DatasetError(
                root / AUG_MASK_DIR / f"{missing[0]}.png",
                f"mask of train_aug id '{missing[0]}' does not exist ({len(missing)} of "
                f"{len(plan.ids)} ids listed in {found_list} have no mask)",
            )
        return plan

    sbd = find_sbd(root)
    if sbd is None:
        if TRAIN_AUG in splits:
            raise train_aug_missing(root)
        return plan

    plan.source = "sbd"
    voc_train = read_id_list(seg / "train.txt", "train")
    voc_val = set(read_id_list(seg / "val.txt", "val"))
    sbd_ids: set[str] = set()
    for split in SBD_SPLITS:
        sbd_ids |= set(read_id_list(sbd / f"{split}.txt", f"SBD {split}"))
    plan.ids = sorted((sbd_ids | set(voc_train)) - voc_val)
    _check_count(plan, sbd)

    voc_masks = list_dir(root / "SegmentationClass")
    sbd_masks = list_dir(sbd / "cls")
    images = list_dir(root / "JPEGImages")
    no_image = [i for i in plan.ids if f"{i}.jpg" not in images]
    if no_image:
        raise DatasetError(
            root / "JPEGImages" / f"{no_image[0]}.jpg",
            f"image of train_aug id '{no_image[0]}' does not exist ({len(no_image)} of "
            f"{len(plan.ids)} train_aug ids have no JPEG; SBD's images are VOC 2012's)",
        )
    no_mask = []
    for image_id in plan.ids:
        if f"{image_id}.png" in voc_masks:
            plan.masks[image_id] = root / "SegmentationClass" / f"{image_id}.png"
        elif f"{image_id}.mat" in sbd_masks:
            plan.masks[image_id] = sbd / "cls" / f"{image_id}.mat"
        else:
            no_mask.append(image_id)
    if no_mask:
        raise DatasetError(
            sbd / "cls" / f"{no_mask[0]}.mat",
            f"SBD mask of train_aug id '{no_mask[0]}' does not exist, nor a VOC mask "
            f"({len(no_mask)} of {len(plan.ids)} ids have neither)",
        )
    return plan


def _check_count(plan: VOCPlan, where: Path) -> None:
    if plan.voc2012 and len(plan.ids) != VOC2012_TRAIN_AUG:
        what = (
            "train_aug"
            if plan.source == "root"
            else "train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val "
            f"(the SBD release lists {SBD_SPLITS['train']:,} + {SBD_SPLITS['val']:,})"
        )
        raise _count_error(where, what, len(plan.ids), VOC2012_TRAIN_AUG, plan.voc2012)


def read_sbd_mask(path: Path) -> np.ndarray:
    """The H×W uint8 class mask of an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``)."""
    from scipy.io import loadmat  # imported lazily: only SBD users need scipy

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        gt = mat["GTcls"]
        seg = gt.Segmentation if hasattr(gt, "Segmentation") else gt["Segmentation"]
        seg = np.asarray(seg)
    except FileNotFoundError:
        raise DatasetError(path, "SBD mask file does not exist") from None
    except KeyError as e:
        raise DatasetError(path, f"SBD .mat has no GTcls.Segmentation ({e!r})") from e
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError, ...
        raise DatasetError(path, f"SBD .mat cannot be read; corrupt or not SBD's ({e!r})") from e
    if seg.ndim != 2 or seg.dtype.kind not in "ui" or seg.size == 0:
        raise DatasetError(
            path, f"GTcls.Segmentation is {seg.dtype} {seg.shape}, not a 2-D integer mask"
        )
    if seg.min() < 0 or seg.max() > 255:
        raise DatasetError(path, f"GTcls.Segmentation holds values up to {int(seg.max())}")
    return seg.astype(np.uint8)


def _convert(item: tuple[str, Path], out_dir: Path, num_classes: int) -> None:
    image_id, src = item
    dst = out_dir / f"{image_id}.png"
    if src.suffix == ".mat":
        mask = read_sbd_mask(src)
        check_mask_values(src, mask, num_classes)
        write_mask_png(dst, mask)
    else:  # VOC's own mask, copied byte for byte once it decodes with valid values
        check_mask_values(src, read_mask(src), num_classes)
        shutil.copyfile(src, dst)


def write_voc(plan: VOCPlan, out: str | Path, *, num_workers: int = 1) -> dict[str, Any]:
    """Write what ``plan`` says to ``out`` (only when built from SBD); return its summary.

    ``SegmentationClassAug/`` is built in a temporary folder renamed when every mask is
    written, then ``ImageSets/SegmentationAug/train_aug.txt``: a killed run leaves neither
    (the reader needs both).
    """
    out = Path(out)
    if plan.source == "sbd":
        convert = partial(_convert, num_classes=plan.num_classes)
        with atomic_path(out / AUG_MASK_DIR) as tmp:
            tmp.mkdir()
            parallel_map(partial(convert, out_dir=tmp), sorted(plan.masks.items()), num_workers)
        write_text(out / AUG_LIST_DIR / f"{TRAIN_AUG}.txt", "".join(f"{i}\n" for i in plan.ids))
    return plan.summary()

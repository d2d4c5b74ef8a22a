"""Segmentation metrics: confusion matrix, IoU / mIoU, and the CAM background-threshold sweep.

Conventions (those of Pascal VOC and of the WSSS literature):

* class indices are 0..C-1 with 0 = background; ``ignore_index`` (255) pixels of the ground truth
  are left out of every count;
* confusion matrices are C×C int64, rows = ground truth, columns = prediction;
* IoU_c = TP / (TP + FP + FN); a class absent from both ground truth and prediction has IoU NaN
  and is left out of the mean (as VOC's evaluation does); mIoU includes the background class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from pnoc.data.base import IGNORE_INDEX

__all__ = [
    "DEFAULT_THRESHOLDS",
    "CamRecord",
    "CamSweepCounts",
    "ConfusionMatrix",
    "ThresholdSweep",
    "cam_threshold_sweep",
    "confusion_matrix",
    "iou_from_confusion",
]

#: Background thresholds swept by CAM evaluation: 0.05, 0.10, …, 0.80. Rounded so each value is
#: the float nearest to its decimal (``np.arange`` alone gives 0.15000000000000002).
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(0.05, 0.80 + 1e-9, 0.05), 6)


def _to_numpy(x: Any) -> np.ndarray:
    """Numpy view of a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_integer(name: str, a: np.ndarray) -> None:
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")


def confusion_matrix(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> np.ndarray:
    """Confusion matrix of one prediction against its ground truth.

    Args:
        pred: integer class indices, any shape (numpy array or torch tensor); every value must lie
            in [0, num_classes), including where the ground truth is ignored.
        target: ground truth of the same shape; ``ignore_index`` pixels are skipped.
        num_classes: C, background included.
        ignore_index: ground-truth value to skip (None: skip nothing).

    Returns:
        (C, C) int64 matrix, ``m[g, p]`` = number of pixels of ground truth g predicted as p.

    Raises:
        ValueError: shapes differ, or a value of ``pred`` (or a non-ignored value of ``target``)
            lies outside [0, C); the message names the value.
    """
    p = _to_numpy(pred)
    t = _to_numpy(target)
    _check_integer("pred", p)
    _check_integer("target", t)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    p = p.reshape(-1).astype(np.int64, copy=False)
    t = t.reshape(-1).astype(np.int64, copy=False)
    _check_range("pred", p, num_classes)
    if ignore_index is not None:
        valid = t != ignore_index
        p, t = p[valid], t[valid]
    _check_range("target", t, num_classes)
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _check_range(name: str, a: np.ndarray, num_classes: int) -> None:
    if a.size == 0:
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} holds class index {bad}, outside [0, {num_classes}) "
            f"(num_classes={num_classes})"
        )


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU of a (…, C, C) confusion matrix (rows = ground truth); NaN where TP+FP+FN = 0.

    Works on a stack of matrices (e.g. one per threshold): returns shape (…, C).
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    union = m.sum(axis=-1) + m.sum(axis=-2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def _nanmean(a: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` without the RuntimeWarning on all-NaN slices (they give NaN)."""
    a = np.asarray(a, dtype=np.float64)
    finite = ~np.isnan(a)
    count = finite.sum(axis=axis)
    total = np.where(finite, a, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


class ConfusionMatrix:
    """Accumulates a C×C confusion matrix over many images.

    >>> cm = ConfusionMatrix(3)
    >>> cm.update(pred_mask, gt_mask)  # doctest: +SKIP
    >>> cm.miou()  # doctest: +SKIP
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """(C, C) int64 counts, rows = ground truth, columns = prediction (a copy)."""
        return self._matrix.copy()

    def update(self, pred: Any, target: Any) -> None:
        """Add one image (or a batch: any shape) of predictions against its ground truth."""
        self._matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def add(self, matrix: np.ndarray) -> None:
        """Add an already computed (C, C) matrix (e.g. from a worker process)."""
        m = np.asarray(matrix)
        if m.shape != self._matrix.shape:
            raise ValueError(f"matrix shape {m.shape} differs from {self._matrix.shape}")
        self._matrix += m.astype(np.int64)

    def reset(self) -> None:
        self._matrix[:] = 0

    def iou(self) -> np.ndarray:
        """(C,) float64 IoU per class; NaN for a class absent from both gt and prediction."""
        return iou_from_confusion(self._matrix)

    def miou(self) -> float:
        """Mean IoU over the classes present in ground truth or prediction (NaN if none)."""
        return float(_nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        """Correct pixels / labelled pixels (NaN when nothing was counted)."""
        total = self._matrix.sum()
        return float(np.trace(self._matrix) / total) if total else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary: ``{"miou", "pixel_acc", "iou": {name: value or None}}``.

        NaN becomes None (JSON has no NaN); names default to the class indices as strings.
        """
        names = _class_names(class_names, self.num_classes)
        return {
            "miou": _none_if_nan(self.miou()),
            "pixel_acc": _none_if_nan(self.pixel_accuracy()),
            "iou": {n: _none_if_nan(v) for n, v in zip(names, self.iou(), strict=True)},
        }


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    return list(class_names)


class CamRecord(NamedTuple):
    """CAMs of one image, as the threshold sweep consumes them.

    cams:    (k, H, W) float, values in [0, 1]: one map per foreground class present in the image.
    classes: (k,) int, the class index of each map in the full class space (1..C-1; 0 = background).
    target:  (H, W) integer ground truth (0 = background, ``ignore_index`` skipped).
    """

    cams: np.ndarray
    classes: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class ThresholdSweep:
    """Result of :func:`cam_threshold_sweep`.

    thresholds: (T,) background thresholds, in the order given.
    matrices:   (T, C, C) int64 confusion matrix per threshold.
    ious:       (T, C) per-class IoU per threshold (NaN: class absent from gt and prediction).
    miou:       (T,) mIoU per threshold.
    best_index: index of the best threshold (the lowest one among ties).
    """

    thresholds: np.ndarray
    matrices: np.ndarray
    ious: np.ndarray
    miou: np.ndarray
    best_index: int

    @property
    def best_threshold(self) -> float:
        return float(self.thresholds[self.best_index])

    @property
    def best_miou(self) -> float:
        return float(self.miou[self.best_index])

    @property
    def best_iou(self) -> np.ndarray:
        """(C,) per-class IoU at the best threshold."""
        return self.ious[self.best_index]

    def to_rows(self) -> list[dict[str, float | None]]:
        """``[{"threshold": t, "miou": m}, …]`` for a DVC plot (CSV or JSON)."""
        return [
            {"threshold": float(t), "miou": _none_if_nan(float(m))}
            for t, m in zip(self.thresholds, self.miou, strict=True)
        ]

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary at the best threshold (the shape of a DVC metrics file)."""
        names = _class_names(class_names, self.ious.shape[1])
        return {
            "best_threshold": self.best_threshold,
            "miou": _none_if_nan(self.best_miou),
            "iou": {n: _none_if_nan(v) for n, v in zip(names, self.best_iou, strict=True)},
        }


def cam_threshold_sweep(
    records: Iterable[CamRecord],
    num_classes: int,
    thresholds: Any = DEFAULT_THRESHOLDS,
    ignore_index: int | None = IGNORE_INDEX,
) -> ThresholdSweep:
    """Evaluate CAMs at every background threshold in one pass over the images.

    For threshold t a pixel's prediction is argmax over ``[t, cams[0], …, cams[k-1]]`` mapped to
    ``[0, classes…]``. Ties rule: a pixel is foreground only when its maximal CAM value is
    *strictly greater* than t (``cam == t`` → background), as the authors' ``argmax`` over the
    threshold-padded stack does (argmax returns the first maximum, the background). Ties between
    two classes go to the first map. Comparison happens in float64 of the values given.

    Implementation: per pixel only the maximal CAM value m and its class c matter. With the
    thresholds sorted, the pixel is foreground for the n = #{t < m} lowest thresholds; one
    bincount over (n, gt, c) per image, accumulated, then a cumulative sum over n gives every
    threshold's confusion matrix: O(pixels) per image whatever the number of thresholds
    (:class:`CamSweepCounts` holds those counts, for callers that add records one by one).

    Args:
        records: iterable of :class:`CamRecord` (may be a generator streaming from disk).
        num_classes: C, background included.
        thresholds: 1-D background thresholds (any order; returned in the order given).
        ignore_index: ground-truth value to skip.

    Raises:
        ValueError: inconsistent shapes, class indices outside [1, C), or no labelled pixel at all.
    """
    counts = CamSweepCounts(num_classes, thresholds, ignore_index)
    for i, rec in enumerate(records):
        counts.add(rec, i)
    return counts.sweep()


class CamSweepCounts:
    """The counts behind :func:`cam_threshold_sweep`, accumulated record by record.

    ``hist`` ((T + 1)·C·C int64) counts the labelled pixels by (number of sorted thresholds they
    are foreground for, ground truth, best class); ``labelled`` is their total. Both are plain
    sums over the records, so counts of disjoint sets of images (e.g. one per worker) add up to
    those of their union; :meth:`sweep` turns them into the :class:`ThresholdSweep`.

    Raises as :func:`cam_threshold_sweep` does.
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Any = DEFAULT_THRESHOLDS,
        ignore_index: int | None = IGNORE_INDEX,
    ) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if self.thresholds.size == 0:
            raise ValueError("thresholds is empty")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._order = np.argsort(self.thresholds, kind="stable")
        self._sorted = self.thresholds[self._order]
        # hist[n, g, c]: pixels of gt g whose best class c is foreground for the n lowest
        # thresholds.
        self.hist = np.zeros((self.thresholds.size + 1) * num_classes**2, dtype=np.int64)
        self.labelled = 0

    def add(self, rec: CamRecord, i: int = 0) -> None:
        """Count one image's record; ``i`` names it in errors (e.g. its index in the split)."""
        num_classes, c2 = self.num_classes, self.num_classes**2
        cams, classes, target = _check_record(i, rec, num_classes)
        gt = target.reshape(-1).astype(np.int64)
        if cams.shape[0] == 0:
            n_fg = np.zeros(gt.shape, dtype=np.int64)
            best_cls = np.zeros(gt.shape, dtype=np.int64)
        else:
            flat = cams.reshape(cams.shape[0], -1)
            arg = flat.argmax(axis=0)
            best = np.take_along_axis(flat, arg[None], axis=0)[0].astype(np.float64)
            best_cls = classes[arg]
            # side="left": number of thresholds strictly below the pixel's best value.
            n_fg = np.searchsorted(self._sorted, best, side="left").astype(np.int64)
        if self.ignore_index is not None:
            valid = gt != self.ignore_index
            gt, n_fg, best_cls = gt[valid], n_fg[valid], best_cls[valid]
        _check_range(f"record {i} target", gt, num_classes)
        self.labelled += gt.size
        self.hist += np.bincount(n_fg * c2 + gt * num_classes + best_cls, minlength=self.hist.size)

    def sweep(self) -> ThresholdSweep:
        """The sweep of the records counted so far (ValueError when no pixel is labelled)."""
        if self.labelled == 0:
            raise ValueError("no labelled pixel in the records: nothing to evaluate")
        thr, order, num_classes = self.thresholds, self._order, self.num_classes
        hist3 = self.hist.reshape(thr.size + 1, num_classes, num_classes)
        # fg_at[j] = pixels foreground at sorted threshold j = those with n > j.
        fg_at = np.cumsum(hist3[::-1], axis=0)[::-1][1:]  # (T, C, C): sum over n >= j+1
        per_gt_total = hist3.sum(axis=(0, 2))  # (C,) labelled pixels per gt class
        matrices_sorted = fg_at.copy()
        # Pixels not foreground at threshold j go to background (column 0).
        matrices_sorted[:, :, 0] += per_gt_total[None, :] - fg_at.sum(axis=2)
        matrices = np.empty_like(matrices_sorted)
        matrices[order] = matrices_sorted
        ious = iou_from_confusion(matrices)
        miou = _nanmean(ious, axis=1)
        best_index = int(np.nanargmax(miou)) if not np.all(np.isnan(miou)) else 0
        # nanargmax returns the first maximum in the *given* order; prefer the lowest threshold.
        ties = np.flatnonzero(miou == miou[best_index])
        best_index = int(ties[np.argmin(thr[ties])])
        return ThresholdSweep(
            thresholds=thr, matrices=matrices, ious=ious, miou=miou, best_index=best_index
        )


def _check_record(
    i: int, rec: CamRecord, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cams = _to_numpy(rec.cams)
    classes = _to_numpy(rec.classes).reshape(-1).astype(np.int64)
    target = _to_numpy(rec.target)
    _check_integer(f"record {i} target", target)
    if target.ndim != 2:
        raise ValueError(f"record {i}: target must be (H, W), got shape {target.shape}")
    if cams.ndim == 2 and classes.size == 1:
        cams = cams[None]
    if cams.ndim != 3 or cams.shape[1:] != target.shape or cams.shape[0] != classes.size:
        raise ValueError(
            f"record {i}: cams shape {cams.shape} does not match "
            f"{classes.size} classes × target shape {target.shape}"
        )
    if classes.size and (classes.min() < 1 or classes.max() >= num_classes):
        raise ValueError(
            f"record {i}: CAM class indices {classes.tolist()} must lie in [1, {num_classes})"
        )
    return cams, classes, target

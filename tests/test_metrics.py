"""Tests of pnoc.metrics: confusion matrix, IoU/mIoU and the CAM background-threshold sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from pnoc.metrics import (
    DEFAULT_THRESHOLDS,
    CamRecord,
    ConfusionMatrix,
    cam_threshold_sweep,
    confusion_matrix,
)

# A 2×3 case worked by hand (C = 3, one ignored pixel):
#   gt   = 0 1 2      pred = 0 1 1
#          2 2 255           2 2 0
# counted pixels (g, p): (0,0) (1,1) (2,1) (2,2) (2,2)
GT = np.array([[0, 1, 2], [2, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
EXPECTED = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 2]])


def test_confusion_matrix_by_hand() -> None:
    m = confusion_matrix(PRED, GT, 3)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, EXPECTED)


def test_iou_miou_pixel_accuracy_by_hand() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    # IoU = TP / (gt + pred - TP): class 0: 1/1, class 1: 1/(1+2-1), class 2: 2/(3+2-2)
    np.testing.assert_allclose(cm.iou(), [1.0, 0.5, 2 / 3])
    assert cm.miou() == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 5)


def test_accumulates_over_images_and_accepts_torch() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    cm.update(torch.from_numpy(PRED.astype(np.int64)), torch.from_numpy(GT))
    np.testing.assert_array_equal(cm.matrix, 2 * EXPECTED)
    cm.reset()
    assert cm.matrix.sum() == 0


def test_ignore_index_pixels_are_not_counted() -> None:
    gt = np.full((4, 4), 255, dtype=np.uint8)
    gt[0, 0] = 1
    pred = np.zeros((4, 4), dtype=np.int64)  # wrong everywhere, but only one pixel counts
    m = confusion_matrix(pred, gt, 2)
    assert m.sum() == 1 and m[1, 0] == 1


def test_class_absent_from_gt_and_pred_is_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(4)  # class 3 never appears
    cm.update(PRED, GT)
    iou = cm.iou()
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    d = cm.to_dict(["bg", "a", "b", "c"])
    assert d["iou"]["c"] is None
    assert d["iou"]["a"] == pytest.approx(0.5)
    assert d["miou"] == pytest.approx(cm.miou())
    assert d["pixel_acc"] == pytest.approx(0.8)


def test_class_missed_by_prediction_counts_as_zero() -> None:
    gt = np.array([[0, 1]])
    pred = np.array([[0, 0]])
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    np.testing.assert_allclose(cm.iou(), [0.5, 0.0])
    assert cm.miou() == pytest.approx(0.25)


def test_empty_matrix_gives_nan_not_warnings() -> None:
    cm = ConfusionMatrix(3)
    with np.errstate(all="raise"):
        assert np.isnan(cm.miou()) and np.isnan(cm.pixel_accuracy())
    assert cm.to_dict()["miou"] is None


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_prediction_out_of_range_names_the_value(bad: int) -> None:
    pred = PRED.astype(np.int64)
    pred[0, 0] = bad
    with pytest.raises(ValueError, match=str(bad)):
        confusion_matrix(pred, GT, 3)


def test_shape_mismatch_and_float_input_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, GT[:, :2], 3)
    with pytest.raises(TypeError):
        confusion_matrix(PRED.astype(np.float32), GT, 3)


def test_agrees_with_sklearn_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    c = 6
    gt = rng.integers(0, c, size=(3, 37, 41)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, c, size=gt.shape)
    valid = gt != 255
    expected = sk_confusion_matrix(gt[valid], pred[valid], labels=np.arange(c))
    np.testing.assert_array_equal(confusion_matrix(pred, gt, c), expected)


# -- threshold sweep ---------------------------------------------------------------------------


def _random_records(rng: np.random.Generator, num_classes: int, n: int) -> list[CamRecord]:
    records = []
    for i in range(n):
        h, w = rng.integers(5, 12, size=2)
        k = i % 4  # includes images with no foreground class
        classes = np.sort(rng.choice(np.arange(1, num_classes), size=k, replace=False))
        cams = rng.random((k, h, w)).astype(np.float32)
        # Exact ties with thresholds and between classes, to exercise the rules.
        if k:
            cams[0, 0, :] = 0.5
            cams[:, -1, -1] = 0.25
        target = rng.choice(np.r_[0, classes, 255], size=(h, w)).astype(np.uint8)
        records.append(CamRecord(cams, classes, target))
    return records


def _naive_sweep(records: list[CamRecord], num_classes: int, thresholds: np.ndarray) -> np.ndarray:
    """One confusion matrix per threshold, the way the authors' evaluation loop does it."""
    out = np.zeros((len(thresholds), num_classes, num_classes), dtype=np.int64)
    for j, t in enumerate(thresholds):
        for cams, classes, target in records:
            stack = np.concatenate([np.full((1, *target.shape), t), cams.astype(np.float64)])
            keys = np.r_[0, classes].astype(np.int64)
            pred = keys[stack.argmax(axis=0)]  # argmax takes the first maximum: ties → background
            out[j] += confusion_matrix(pred, target, num_classes)
    return out


def test_sweep_equals_naive_per_threshold_loop() -> None:
    rng = np.random.default_rng(1)
    c = 5
    records = _random_records(rng, c, 12)
    sweep = cam_threshold_sweep(iter(records), c)  # a generator is enough
    expected = _naive_sweep(records, c, DEFAULT_THRESHOLDS)
    np.testing.assert_array_equal(sweep.matrices, expected)
    for j in range(len(DEFAULT_THRESHOLDS)):
        cm = ConfusionMatrix(c)
        cm.add(expected[j])
        assert sweep.miou[j] == pytest.approx(cm.miou())
    best = int(np.argmax(sweep.miou))
    assert sweep.best_threshold == pytest.approx(DEFAULT_THRESHOLDS[best])
    assert sweep.best_miou == pytest.approx(sweep.miou.max())
    np.testing.assert_array_equal(sweep.best_iou, sweep.ious[best])


def test_sweep_keeps_the_order_of_unsorted_thresholds() -> None:
    rng = np.random.default_rng(2)
    records = _random_records(rng, 4, 6)
    thresholds = np.array([0.6, 0.1, 0.35, 0.1])
    sweep = cam_threshold_sweep(records, 4, thresholds)
    np.testing.assert_array_equal(sweep.thresholds, thresholds)
    np.testing.assert_array_equal(sweep.matrices, _naive_sweep(records, 4, thresholds))


def test_ties_rule_strictly_greater_is_foreground() -> None:
    # cam == threshold → background; cam > threshold → foreground (0.5 and 0.75 exact in binary).
    cams = np.array([[[0.5, 0.75]]], dtype=np.float32)
    target = np.array([[1, 1]], dtype=np.uint8)
    sweep = cam_threshold_sweep([CamRecord(cams, np.array([1]), target)], 2, [0.5])
    np.testing.assert_array_equal(sweep.matrices[0], [[0, 0], [1, 1]])


def test_sweep_rows_dict_and_best_threshold_on_a_known_case() -> None:
    # Object pixels have CAM 0.6, background pixels 0.3: any threshold in [0.3, 0.6) is perfect.
    cams = np.array([[[0.6, 0.6, 0.3, 0.3]]])
    target = np.array([[2, 2, 0, 0]], dtype=np.uint8)
    sweep = cam_threshold_sweep([CamRecord(cams, np.array([2]), target)], 3)
    assert sweep.best_miou == pytest.approx(1.0)  # class 1 absent: left out of the mean
    assert sweep.best_threshold == pytest.approx(0.30)  # the lowest of the tied best
    rows = sweep.to_rows()
    assert len(rows) == 16 and rows[0]["threshold"] == pytest.approx(0.05)
    assert {r["miou"] for r in rows if 0.3 <= r["threshold"] < 0.6} == {1.0}
    d = sweep.to_dict(["bg", "a", "b"])
    assert d["iou"] == {"bg": 1.0, "a": None, "b": 1.0}
    assert d["best_threshold"] == pytest.approx(0.30)


def test_sweep_validates_records() -> None:
    target = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="class indices"):
        cam_threshold_sweep([CamRecord(np.zeros((1, 2, 2)), np.array([0]), target)], 3)
    with pytest.raises(ValueError, match="shape"):
        cam_threshold_sweep([CamRecord(np.zeros((1, 3, 2)), np.array([1]), target)], 3)
    with pytest.raises(ValueError, match="no labelled pixel"):
        cam_threshold_sweep([CamRecord(np.zeros((0, 2, 2)), np.array([]), target + 255)], 3)

import logging

import numpy as np

from pnoc.data.factory import warn_missing_classes


class _Labels:
    split = "train"
    class_names = ["background", "cat", "dog", "cow"]

    def label_matrix(self) -> np.ndarray:
        return np.array([[1, 0, 0], [1, 0, 1]], dtype=np.float32)


def test_class_without_positive_image_is_warned_by_name(caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_missing_classes(_Labels()) == ["dog"]
    assert "class 'dog' has no positive image in split 'train'" in caplog.text

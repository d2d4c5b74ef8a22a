"""C²AM-H: class-agnostic saliency (CCAM) trained with CAM hints (P-NOC, arXiv 2305.12522).

- :mod:`pnoc.saliency.losses`: CCAM's contrastive terms and the hint term;
- :mod:`pnoc.saliency.training`: the engine Method, the image + hint dataset and the orientation
  fix (the training recipe is the ``train_saliency`` step, :mod:`pnoc.steps.train_saliency`);
- :mod:`pnoc.saliency.inference`: prediction, PNG storage, evaluation counts and overlays.

The network is :class:`pnoc.models.ccam.CCAMNet`.
"""

from pnoc.saliency.inference import (
    load_saliency_png,
    orientation,
    orientation_means,
    predict_saliency,
    saliency_confusion,
    saliency_overlay_grid,
    save_saliency_png,
)
from pnoc.saliency.losses import ccam_loss, hint_loss, hint_map, sim_max_loss, sim_min_loss
from pnoc.saliency.training import (
    C2AMH,
    HintSet,
    OrientationCheck,
    fix_orientation,
)

__all__ = [
    "C2AMH",
    "HintSet",
    "OrientationCheck",
    "ccam_loss",
    "fix_orientation",
    "hint_loss",
    "hint_map",
    "load_saliency_png",
    "orientation",
    "orientation_means",
    "predict_saliency",
    "saliency_confusion",
    "saliency_overlay_grid",
    "save_saliency_png",
    "sim_max_loss",
    "sim_min_loss",
]

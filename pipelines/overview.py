"""``pnoc overview``: one picture of what the pipeline made, image by image.

For the first images of ``pseudo_masks.split``: the image, its CAM (the strongest present
class), its saliency, its pseudo-mask and DeepLabV3+'s prediction, read from the outputs of a
finished ``dvc repro`` (``outputs/cams``, ``outputs/saliency``, ``outputs/pseudo_masks``,
``models/deeplab.pt``), with titled columns and a legend of the classes shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.data.factory import open_dataset
from pnoc.data.files import read_mask
from pnoc.errors import PnocError
from pnoc.saliency.inference import load_saliency_png, saliency_path
from pnoc.serving import Segmenter
from pnoc.viz import Panel, grid_figure, legend_entries, overlay_heat, overlay_mask, save_figure
from pnoc_pipelines import paths
from pnoc_pipelines.common import load_params

COLUMNS = ("image", "CAM", "saliency", "pseudo-mask", "prediction")
ALPHA = 0.55


def run(out: Path, count: int = 4) -> Path:
    """Write the overview of ``count`` images to ``out``; returns ``out``."""
    params = load_params()
    split = params.pseudo_masks.split
    needed = [paths.CAMS, paths.SALIENCY, paths.PSEUDO_MASKS, paths.DEEPLAB_MODEL]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise PnocError(f"{', '.join(missing)}: not found; run `pnoc repro` (or `dvc repro`) first")
    dataset = open_dataset(params.data, split)
    names = dataset.class_names
    seg = params.segmentation
    segmenter = Segmenter.from_checkpoint(paths.DEEPLAB_MODEL, seg.tta_scales, seg.tta_flip)
    rows, masks = [], []
    for image_id in dataset.ids[:count]:
        image = dataset.load_image(image_id)
        cams, classes = load_cam_npz(cam_path(paths.CAMS, image_id))
        strongest = int(np.argmax(cams.reshape(len(cams), -1).max(1))) if len(cams) else None
        if strongest is None:
            cam_panel = Panel(None, empty="no class")
        else:
            heat = overlay_heat(image, cams[strongest].astype(np.float32), ALPHA)
            cam_panel = Panel(heat, names[int(classes[strongest])])
        sal = load_saliency_png(saliency_path(paths.SALIENCY, image_id))
        pseudo = read_mask(paths.PSEUDO_MASKS / f"{image_id}.png")
        [(prediction, _)] = segmenter.predict([image])
        masks += [pseudo, prediction]
        rows.append(
            [
                Panel(image),
                cam_panel,
                Panel(overlay_heat(image, sal, ALPHA)),
                Panel(overlay_mask(image, pseudo, ALPHA, skip_background=True)),
                Panel(overlay_mask(image, prediction, ALPHA, skip_background=True)),
            ]
        )
    if not rows:
        raise PnocError(f"split '{split}' has no images")
    fig = grid_figure(
        rows,
        column_titles=COLUMNS,
        title=f"P-NOC on {params.data.name} ({split} images)",
        legend=legend_entries(masks, names),
        colorbar="CAM / saliency",
    )
    save_figure(fig, out)
    return out

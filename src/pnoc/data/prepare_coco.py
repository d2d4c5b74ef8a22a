"""COCO 2014 class masks and image-level labels from the instances JSON, resumable and parallel.

For a split opened by :class:`~pnoc.data.coco.COCODataset` (which already checked that every
image the JSON lists has its file), :func:`prepare_coco` writes under the output folder

- ``masks/<split>2014/<id>.png``: the class mask as a VOC palette PNG, rendered by
  :func:`pnoc.data.coco.render_mask` (background 0, the 80 categories renumbered 1..80 in
  category id order, crowd regions 255, the smaller instance winning where instances overlap);
- ``labels/<split>2014.json``: classes, category ids and, per image, its COCO id, file name,
  size and present classes (crowd annotations included), written last.

Each mask is written to a temporary file and renamed, so a killed run leaves only complete
masks (and ``.tmp`` files, removed on the next run); a rerun skips masks that decode to the
image's size and renders the rest. Which masks may be kept across runs is decided by the
caller from a stamp of the JSON (:func:`annotation_stamp`, :func:`pnoc.data.prepared.begin`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from pnoc.data.coco import COCODataset, prepared_paths, render_mask
from pnoc.data.files import list_dir, write_mask_png
from pnoc.data.prepared import parallel_map, remove_temporaries
from pnoc.io import write_text


def annotation_stamp(path: str | Path) -> str:
    """md5 of an annotation file: masks rendered from it are kept while it is unchanged."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mask_is_complete(path: Path, height: int, width: int) -> bool:
    """Whether ``path`` is a fully decodable class-index PNG of the given size."""
    try:
        with Image.open(path) as im:
            if im.size != (width, height) or im.mode not in ("P", "L"):
                return False
            im.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _render_one(
    task: tuple[str, int, int, list[dict[str, Any]]],
    out_dir: Path,
    category_to_index: Mapping[int, int],
    source: Path,
) -> bool:
    """Render and write one mask unless a complete one is there; True when written."""
    image_id, h, w, anns = task
    dst = out_dir / f"{image_id}.png"
    if mask_is_complete(dst, h, w):
        return False
    mask = render_mask(anns, h, w, category_to_index, source=source, image_id=image_id)
    write_mask_png(dst, mask)
    return True


def prepare_coco(dataset: COCODataset, out: str | Path, *, num_workers: int = 1) -> dict[str, Any]:
    """Write the masks and labels of ``dataset`` (opened from the instances JSON) to ``out``.

    Returns ``images`` (masks written or kept), ``rendered`` (written by this run), ``kept``
    and ``classes``. A mask of an id the split no longer lists is removed.
    """
    labels_path, mask_dir = prepared_paths(out, dataset.split)
    mask_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(mask_dir)
    wanted = set(dataset.ids)
    for name in list_dir(mask_dir):
        if name.endswith(".png") and name[:-4] not in wanted:
            (mask_dir / name).unlink()
    tasks = [
        (image_id, *dataset.image_size(image_id), dataset.annotations(image_id))
        for image_id in dataset.ids
    ]
    render = partial(
        _render_one,
        out_dir=mask_dir,
        category_to_index=dict(dataset.category_to_index),
        source=dataset.annotation_path,
    )
    written = parallel_map(render, tasks, num_workers)
    rendered = sum(written)
    doc = dataset.labels_document()
    # One image per line: compact, yet readable and diffable.
    lines = ",\n".join(json.dumps(entry, separators=(",", ":")) for entry in doc.pop("images"))
    head = json.dumps(doc, separators=(",", ":"))[:-1]
    write_text(labels_path, f'{head},"images":[\n{lines}\n]}}\n')
    return {
        "images": len(tasks),
        "rendered": rendered,
        "kept": len(tasks) - rendered,
        "classes": dataset.num_classes,
    }

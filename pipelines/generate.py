"""Stage ``generate``: write the embedded dataset to data/synthetic.

In the layout ``data.synthetic.layout`` (voc, voc_sbd or coco), at ``data.synthetic.shape``
([width, height]; null: square ``data.image_size``). Deterministic: the same params give
byte-identical files, so DVC caches it once. It is cheap and runs even when the pipeline points
at real data; with ``data.name`` voc or coco14 and ``data.root`` data/synthetic, the real-data
recipes run on it (config.py checks that the name reads the layout).
"""

from __future__ import annotations

from typing import Any

import mlflow

from pnoc.config import SYNTHETIC_ROOT, DataParams
from pnoc.data.synthetic import generate_synthetic
from pnoc_pipelines.common import main, stage


def generator_kwargs(data: DataParams) -> dict[str, Any]:
    """``generate_synthetic``'s arguments (all but the folder) for ``data.synthetic``."""
    syn = data.synthetic
    return dict(
        num_train=syn.train,
        num_val=syn.val,
        num_classes=syn.classes,
        image_size=data.image_size,
        seed=syn.seed,
        cooccurrence=syn.cooccurrence,
        body_size=syn.body_size,
        mark_area=syn.mark_area,
        shape=syn.shape,
        layout=syn.layout,
    )


def run() -> None:
    with stage("generate") as ctx:
        syn = ctx.params.data.synthetic
        stats = generate_synthetic(SYNTHETIC_ROOT, **generator_kwargs(ctx.params.data))
        flat = {k: v for k, v in stats.to_dict().items() if isinstance(v, int | float)}
        mlflow.log_metrics({f"synthetic.{k}": float(v) for k, v in flat.items()})
        print(
            f"generated {syn.train} train / {syn.val} val {stats.width}x{stats.height} images "
            f"in {SYNTHETIC_ROOT} ({syn.layout} layout)"
        )


if __name__ == "__main__":
    main(run)

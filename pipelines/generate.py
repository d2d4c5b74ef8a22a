"""Stage ``generate``: write the embedded VOC-format dataset to data/synthetic.

Deterministic: the same ``data.synthetic`` params give byte-identical files, so DVC caches it
once. It is cheap and runs even when the pipeline points at real data (``data.name`` voc/coco14).
"""

from __future__ import annotations

import mlflow

from pnoc.config import SYNTHETIC_ROOT
from pnoc.data.synthetic import generate_synthetic
from pnoc_pipelines.common import main, stage


def run() -> None:
    with stage("generate") as ctx:
        syn = ctx.params.data.synthetic
        stats = generate_synthetic(
            SYNTHETIC_ROOT,
            num_train=syn.train,
            num_val=syn.val,
            num_classes=syn.classes,
            image_size=ctx.params.data.image_size,
            seed=syn.seed,
            cooccurrence=syn.cooccurrence,
            body_size=syn.body_size,
            mark_area=syn.mark_area,
        )
        flat = {k: v for k, v in stats.to_dict().items() if isinstance(v, int | float)}
        mlflow.log_metrics({f"synthetic.{k}": float(v) for k, v in flat.items()})
        print(f"generated {syn.train} train / {syn.val} val images in {SYNTHETIC_ROOT}")


if __name__ == "__main__":
    main(run)

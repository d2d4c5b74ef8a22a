"""Stage ``check_params``: validate params.yaml before any other stage can lose its outputs.

DVC deletes a stage's outputs before it runs the stage's command, and only then finds that a
dependency such as ``${data.root}`` is missing: the stage fails with DVC's own message, its
previous outputs gone. Every other stage depends on this stage's output and this stage on all of
params.yaml, so any params change reruns it first: invalid params (a ``data.root`` folder that
does not exist included) stop `dvc repro` here, with the one-line error naming the key, before
anything else is touched. A dataset folder that disappears while params.yaml stays the same is
not caught here (this stage does not rerun then).

The output names only the dataset (``data.name``, ``data.root``), which every dependent stage
already tracks, so a valid change of other params reruns no stage through it.
"""

from __future__ import annotations

from pnoc.config import Params
from pnoc.errors import ConfigError
from pnoc.io import write_json
from pnoc_pipelines import paths
from pnoc_pipelines.common import load_params, main, remove_stale_temporaries

#: The sections that build a network on a backbone.
NETWORK_SECTIONS = ("oc", "cam", "saliency", "affinity", "segmentation")


def check_backbones(params: Params) -> None:
    """Every section's timm backbone exists and gives features at its output stride (checked on
    the meta device: no weights built); the first that does not stops here, naming its key."""
    from pnoc.models.backbones import check_backbone

    for section in NETWORK_SECTIONS:
        cfg = getattr(params, section)
        try:
            check_backbone(cfg.backbone, cfg.output_stride)
        except ConfigError as exc:
            message = str(exc).removeprefix("backbone: ")
            raise ConfigError(f"params.yaml: {section}.backbone: {message}") from None


def run() -> None:
    params = load_params()
    data = params.data
    check_backbones(params)
    remove_stale_temporaries("check_params")
    write_json(paths.PARAMS_CHECK, {"dataset": data.name, "root": str(data.root)})
    print(f"params.yaml is valid: dataset {data.name} at {data.root}")


if __name__ == "__main__":
    main(run)

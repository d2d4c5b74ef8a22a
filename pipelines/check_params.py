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

from pnoc.io import write_json
from pnoc_pipelines import paths
from pnoc_pipelines.common import load_params, main, remove_stale_temporaries


def run() -> None:
    data = load_params().data
    remove_stale_temporaries("check_params")
    write_json(paths.PARAMS_CHECK, {"dataset": data.name, "root": str(data.root)})
    print(f"params.yaml is valid: dataset {data.name} at {data.root}")


if __name__ == "__main__":
    main(run)

#!/usr/bin/env bash
# estimate_voc12.sh: what the full voc12 recipe (ResNet-50, the authors' settings) costs on this
# machine, before any VOC file is downloaded. `pnoc estimate` probes every stage of the recipe on
# the generated VOC-size stand-in (500×375 images, 20 classes, VOC layout with an SBD folder, so
# `prepare` builds train_aug) and scales to Pascal VOC 2012's counts: train_aug 10,582 images,
# val 1,449.
#
#   benchmarks/estimate_voc12.sh [cpu|cuda] [more `pnoc estimate` options]
#
# Weights are null (random initialisation, nothing downloaded): time and memory do not depend on
# them. The project is a temporary copy (dvc.yaml, src/, pipelines/, params.yaml with the recipe
# applied) with its own MLflow store; the table is printed and written to $ESTIMATE_OUT (default:
# $OUT/estimate_voc12, else the temporary folder) as estimate.json.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
DEVICE=${1:-cpu}
shift || true
PY=$REPO/.venv/bin/python
[[ -x "$PY" ]] || PY=python3
BIN=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
WORK=$(mktemp -d -t estimate_voc12.XXXXXX)
OUT_DIR=${ESTIMATE_OUT:-${OUT:+$OUT/estimate_voc12}}
OUT_DIR=${OUT_DIR:-$WORK}
mkdir -p "$OUT_DIR"

cp -r dvc.yaml .dvcignore params.yaml src pipelines "$WORK"/
cd "$WORK"
# This checkout's code, installed or not (the package pnoc_pipelines is the folder pipelines/).
mkdir .shim && ln -s "$REPO/pipelines" .shim/pnoc_pipelines
export PATH="$BIN:$PATH" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export PYTHONPATH="$WORK/.shim:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m dvc init -q --no-scm
"$PY" - "$DEVICE" <<'PY'
import sys
from pathlib import Path

from pnoc_pipelines import recipe
from pnoc_pipelines.params_file import set_params

values = dict(recipe.load("voc12").values)
values |= {
    "base.device": sys.argv[1],
    "base.progress": False,
    "data.root": "data/synthetic",
    "data.synthetic.shape": [500, 375],
    "data.synthetic.classes": 20,
    "data.synthetic.layout": "voc_sbd",
    "data.synthetic.train": 24,
    "data.synthetic.val": 12,
}
values |= {f"{s}.weights": None for s in ("oc", "cam", "saliency", "affinity", "segmentation")}
set_params(Path("params.yaml"), values, origin="voc12 on the generated stand-in")
PY
"$PY" -m dvc repro -q prepare
"$PY" -m pnoc_pipelines.cli estimate --images train_aug=10582 --images val=1449 "$@"
cp reports/estimate.json "$OUT_DIR/estimate.json"

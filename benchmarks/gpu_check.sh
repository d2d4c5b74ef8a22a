#!/usr/bin/env bash
# gpu_check.sh: the first thing to run on a GPU machine. Measures every pipeline stage on CUDA
# at a VOC-like resolution with benchmarks/bench_scaling.py: images/s, peak GPU memory and the
# 1-GPU vs all-GPUs scaling per stage; then benchmarks/estimate_voc12.sh on one GPU: the
# per-stage time and peak GPU memory of the full voc12 recipe (`pnoc estimate`). Finishes
# within 9.5 minutes on one H100 (hard limits: GPU_CHECK_LIMIT_S, default 360 s, for the
# first part, ESTIMATE_LIMIT_S, default 200 s, for the second).
#
#   benchmarks/gpu_check.sh [--dry-run] [more bench_scaling.py options]
#
# Where no CUDA GPU is visible it prints one line, "gpu_check: skipped: ...", and exits 0.
# --dry-run skips the GPU check and prints the plan bench_scaling.py would run (no stage runs).
#
# What it runs (nothing is downloaded: random initialisation, the embedded generated dataset):
#   * data.image_size 512: 512×512 generated images, 512-px training crops (VOC-like);
#   * every backbone resnet50, weights null (random init); AMP on; base.device cuda;
#   * 256 train + 64 val generated images: 16 steps of the global batch of 16 per epoch,
#     10 epochs = 160 optimizer steps per training stage (5 epochs, 80 steps, per pass when
#     there are several GPUs: two passes run then); inference on the 320 images (cams,
#     saliency), the 256 train images (pseudo_masks) and the 64 val images (evaluate);
#   * base.num_workers: DataLoader processes per GPU, cores / GPUs / 2 (at most 8);
#   * 1 GPU, then all visible GPUs (skipped, with a line, when there is one).
# Peak GPU memory: torch.cuda.max_memory_allocated of each stage process, read at its exit by a
# sitecustomize hook bench_scaling.py puts on the stages' PYTHONPATH (the stages do not log it).
#
# Budget: the dataset takes ~18 s to generate (512 px: ~18 images/s measured on a 2-core Xeon
# CPU, single-threaded), each stage process ~10-15 s to start (torch, CUDA, MLflow), the
# training ~3000 images per stage. bench_scaling.py stops starting runs at its --time-limit
# and prints the table of what finished; `timeout` kills everything at GPU_CHECK_LIMIT_S
# (default 360 s) in any case.
#
# Python: .venv/bin/python when it imports torch, else python3 (which then needs torch, dvc,
# mlflow and the project's requirements). The stages import this checkout's src/ and pipelines/
# through PYTHONPATH, so `make install` need not have run. Output (log and JSON) goes to
# $GPU_CHECK_OUT, else $OUT/gpu_check, else a new temporary folder.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
LIMIT_S=${GPU_CHECK_LIMIT_S:-360}
ESTIMATE_LIMIT_S=${ESTIMATE_LIMIT_S:-200}
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi

PY=""
for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1
    then
        PY=$candidate
        break
    fi
done
if [[ -z "$PY" ]]; then
    echo "gpu_check: error: neither .venv/bin/python nor python3 imports torch (make install)" >&2
    exit 2
fi

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null)
GPUS=${GPUS:-0}
if [[ "$GPUS" == 0 && "$DRY_RUN" == 0 ]]; then
    echo "gpu_check: skipped: no CUDA GPU visible (torch.cuda.is_available() is False for $PY)"
    exit 0
fi

if ! "$PY" -c "import dvc, mlflow, yaml, pydantic" >/dev/null 2>&1; then
    echo "gpu_check: error: $PY lacks dvc, mlflow, yaml or pydantic (make install)" >&2
    exit 2
fi

PASSES=$(( GPUS > 1 ? 2 : 1 ))
EPOCHS=$(( 10 / PASSES ))
N=$(( GPUS > 0 ? GPUS : 1 ))
BATCH=$(( (16 + N - 1) / N * N ))  # the global batch: 16, or the next multiple of the GPUs
CORES=$(nproc 2>/dev/null || echo 8)
LOADERS=$(( CORES / N / 2 ))
LOADERS=$(( LOADERS > 8 ? 8 : (LOADERS < 1 ? 1 : LOADERS) ))

if [[ "$DRY_RUN" == 1 ]]; then
    OUT_DIR=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
else
    OUT_DIR=${GPU_CHECK_OUT:-${OUT:+$OUT/gpu_check}}
    OUT_DIR=${OUT_DIR:-$(mktemp -d -t gpu_check.XXXXXX)}
fi
mkdir -p "$OUT_DIR"

ARGS=(
    benchmarks/bench_scaling.py
    --device cuda --amp
    --image-size 512
    --backbone resnet50 --weights null
    --train-images 256 --val-images 64
    --epochs "$EPOCHS" --batch-size "$BATCH"
    --set "base.num_workers=$LOADERS"
    --time-limit $(( LIMIT_S - 45 ))
    --stage-timeout 240
    --json "$OUT_DIR/gpu_check.json"
)
if [[ "$DRY_RUN" == 1 ]]; then
    ARGS+=(--dry-run)
    [[ "$GPUS" == 0 ]] && ARGS+=(--workers 1)
fi
ARGS+=("$@")

echo "gpu_check: $GPUS GPU(s), $CORES cores, $PY; limit ${LIMIT_S} s; output $OUT_DIR"
echo "gpu_check: $PY ${ARGS[*]}"
timeout -k 10 $(( LIMIT_S - 15 )) "$PY" "${ARGS[@]}" 2>&1 | tee "$OUT_DIR/gpu_check.log"
STATUS=${PIPESTATUS[0]}
if [[ "$STATUS" == 124 || "$STATUS" == 137 ]]; then
    echo "gpu_check: stopped at the time limit (${LIMIT_S} s); the figures above are partial"
fi
if [[ "$DRY_RUN" == 0 ]]; then
    echo "gpu_check: the full voc12 recipe on one GPU: benchmarks/estimate_voc12.sh cuda"
    CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} ESTIMATE_OUT="$OUT_DIR/estimate_voc12" \
        timeout -k 10 "$ESTIMATE_LIMIT_S" bash benchmarks/estimate_voc12.sh cuda \
        --probe-batch 16 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
    ESTIMATE_STATUS=${PIPESTATUS[0]}
    [[ "$STATUS" == 0 ]] && STATUS=$ESTIMATE_STATUS
fi
exit "$STATUS"

"""Every file and folder the stages read and write, relative to the project root, named once.

dvc.yaml lists the same paths per stage (deps, outs, metrics, plots);
tests/pipelines/test_contracts.py checks that each stage module uses exactly the paths its
dvc.yaml entry names. The embedded dataset's folder is the library's
:data:`pnoc.config.SYNTHETIC_ROOT`.
"""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")
SWEEP_CONFIG = Path("pipelines/sweep.yaml")
CHECKPOINT_DIR = Path(".pnoc/checkpoints")  # resumable training state, outside DVC's outputs

DATASET_METRICS = Path("metrics/dataset.json")
SAMPLES_PLOT = Path("plots/samples.png")

OC_MODEL = Path("models/oc.pt")
CAM_MODEL = Path("models/cam.pt")
NOC_MODEL = Path("models/noc.pt")

CAMS = Path("outputs/cams")
CAMS_METRICS = Path("metrics/cams.json")
CAMS_CURVE = Path("plots/cams_threshold.csv")
CAMS_PLOT = Path("plots/cams_overlay.png")

CCAM_MODEL = Path("models/ccam.pt")
SALIENCY = Path("outputs/saliency")
SALIENCY_METRICS = Path("metrics/saliency.json")
SALIENCY_PLOT = Path("plots/saliency_overlay.png")

AFFINITY_LABELS = Path("outputs/affinity_labels")
AFFINITY_MODEL = Path("models/affinity.pt")
AFFINITY_METRICS = Path("metrics/affinity_labels.json")

PSEUDO_MASKS = Path("outputs/pseudo_masks")
PSEUDO_MASKS_METRICS = Path("metrics/pseudo_masks.json")
PSEUDO_MASKS_PLOT = Path("plots/pseudo_masks_overlay.png")

DEEPLAB_MODEL = Path("models/deeplab.pt")
SEGMENTATION_METRICS = Path("metrics/segmentation.json")
CONFUSION_PLOT = Path("plots/confusion.png")
SEGMENTATION_PLOT = Path("plots/segmentation_overlay.png")

REGISTRY_REPORT = Path("reports/registry.json")
ABLATION_REPORT = Path("reports/ablation_cams.json")

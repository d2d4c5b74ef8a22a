"""Every file and folder the stages read and write, relative to the project root, named once.

``metrics/<stage>.json`` hold a stage's headline numbers (what `dvc metrics show` prints);
``reports/<stage>_details.json`` everything else it measured (per-class tables, counts, the
confusion matrix); ``plots/`` the curves and pictures `dvc plots show` gathers.

dvc.yaml lists the same paths per stage (deps, outs, metrics, plots);
tests/pipelines/test_contracts.py checks that each stage module uses exactly the paths its
dvc.yaml entry names. The embedded dataset's folder is the library's
:data:`pnoc.config.SYNTHETIC_ROOT`, the prepared data's :data:`pnoc.data.prepared.PREPARED_ROOT`
(the readers find it there by default).
"""

from pathlib import Path

from pnoc.data.prepared import PREPARED_ROOT

PARAMS_FILE = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")
SWEEP_CONFIG = Path("pipelines/sweep.yaml")
CHECKPOINT_DIR = Path(".pnoc/checkpoints")  # resumable training state, outside DVC's outputs

PARAMS_CHECK = Path("reports/params_check.json")  # every other stage depends on it

# What `prepare` derives from the dataset (SBD → SegmentationClassAug, COCO masks and labels),
# read back by every stage that opens the dataset: the library's pnoc.data.prepared.PREPARED_ROOT.
PREPARED_DATA = PREPARED_ROOT
DATASET_METRICS = Path("metrics/dataset.json")
DATASET_REPORT = Path("reports/dataset_details.json")
SAMPLES_PLOT = Path("plots/samples.png")

OC_MODEL = Path("models/oc.pt")
OC_HISTORY = Path("plots/train_oc_history.csv")  # per-epoch means of the training metrics
CAM_MODEL = Path("models/cam.pt")
NOC_MODEL = Path("models/noc.pt")
CAM_HISTORY = Path("plots/train_cam_history.csv")

CAMS = Path("outputs/cams")
CAMS_METRICS = Path("metrics/cams.json")
CAMS_REPORT = Path("reports/cams_details.json")
CAMS_CURVES = Path("plots/cams_threshold")  # <split>.csv: mIoU per background threshold
CAMS_PLOT = Path("plots/cams_overlay.png")

CCAM_MODEL = Path("models/ccam.pt")
CCAM_HISTORY = Path("plots/train_saliency_history.csv")
SALIENCY = Path("outputs/saliency")
SALIENCY_METRICS = Path("metrics/saliency.json")
SALIENCY_REPORT = Path("reports/saliency_details.json")
SALIENCY_PLOT = Path("plots/saliency_overlay.png")

AFFINITY_LABELS = Path("outputs/affinity_labels")
AFFINITY_MODEL = Path("models/affinity.pt")
AFFINITY_METRICS = Path("metrics/affinity_labels.json")
AFFINITY_REPORT = Path("reports/affinity_labels_details.json")
AFFINITY_HISTORY = Path("plots/train_affinity_history.csv")

PSEUDO_MASKS = Path("outputs/pseudo_masks")
PSEUDO_MASKS_METRICS = Path("metrics/pseudo_masks.json")
PSEUDO_MASKS_REPORT = Path("reports/pseudo_masks_details.json")
PSEUDO_MASKS_PLOT = Path("plots/pseudo_masks_overlay.png")

DEEPLAB_MODEL = Path("models/deeplab.pt")
DEEPLAB_HISTORY = Path("plots/train_segmentation_history.csv")
SEGMENTATION_METRICS = Path("metrics/segmentation.json")
SEGMENTATION_REPORT = Path("reports/segmentation_details.json")
CONFUSION_PLOT = Path("plots/confusion.png")
SEGMENTATION_PLOT = Path("plots/segmentation_overlay.png")

REGISTRY_REPORT = Path("reports/registry.json")
ABLATION_REPORT = Path("reports/ablation_cams.json")
ESTIMATE_REPORT = Path("reports/estimate.json")

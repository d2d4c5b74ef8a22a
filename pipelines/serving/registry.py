"""Logging the segmenter, the registry's aliases, and loading a registered version safely.

:func:`log_segmenter` logs the checkpoint as a ``loader_module`` model (see
:mod:`pnoc_pipelines.serving.model`); :func:`register` registers it with its checkpoint's
SHA-256 in the version's tags and moves the ``champion``/``challenger`` aliases;
:func:`fetch_verified` downloads a model and checks, before anything is loaded, that its
``MLmodel`` names this package's loader (no pickled ``python_model``, no code from the artifact
store) and that its checkpoint is the one registered.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from pnoc.errors import PnocError
from pnoc.serving import Segmenter, decide, encode_image_b64
from pnoc_pipelines.serving.model import (
    CONFIG_FILE,
    INPUT_COLUMN,
    LOADER_MODULE,
    WEIGHTS_FILE,
    check_weights,
    read_config,
    sha256_of,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "pnoc.metric"
VALUE_TAG = "pnoc.metric_value"
WEIGHTS_TAG = "pnoc.weights_sha256"
#: MLflow's download progress bar writes carriage returns into logs; downloads here are local.
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pnoc")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), INPUT_COLUMN)]),
    outputs=Schema(
        [
            ColSpec(Array(Array(DataType.long)), "mask"),
            ColSpec(Array(Array(Array(DataType.double))), "probabilities", required=False),
        ]
    ),
    params=ParamSchema([ParamSpec("probabilities", DataType.boolean, False)]),
)


def _requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def _example_image() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)


def log_segmenter(
    checkpoint: Path, *, scales: Sequence[float], flip: bool, name: str = "model"
) -> ModelInfo:
    """Log the checkpoint as a pyfunc model (with signature and input example) in the active run.

    The served code is the installed ``pnoc`` distribution (pinned in the model's requirements),
    as in the Docker image; the artifact holds data only.
    """
    checkpoint = Path(checkpoint)
    Segmenter.from_checkpoint(checkpoint, scales, flip)  # fail here, not in the server
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "segmenter"
        data.mkdir()
        shutil.copyfile(checkpoint, data / WEIGHTS_FILE)
        config = {
            "scales": [float(s) for s in scales],
            "flip": bool(flip),
            "weights_sha256": sha256_of(data / WEIGHTS_FILE),
        }
        (data / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            loader_module=LOADER_MODULE,
            data_path=str(data),
            signature=SIGNATURE,
            input_example=pd.DataFrame({INPUT_COLUMN: [encode_image_b64(_example_image())]}),
            pip_requirements=_requirements(),
        )


# --------------------------------------------------------------------------------------------
# Registry


def _as_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def current_champion(
    client: MlflowClient, model_name: str, metric_name: str
) -> dict[str, Any] | None:
    """``{"version", "value", "metric"}`` of the ``champion`` alias, or None. ``value`` is None
    when that version records no value for ``metric_name``."""
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (registered.aliases or {}).get(CHAMPION)
    if version is None:
        return None
    tags = client.get_model_version(model_name, str(version)).tags
    recorded = tags.get(METRIC_TAG)
    value = _as_float(tags.get(VALUE_TAG)) if recorded == metric_name else None
    return {"version": int(version), "value": value, "metric": recorded}


def register(
    model_uri: str,
    model_name: str,
    *,
    metric_name: str,
    metric_value: float | None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Register a new version of ``model_name``; alias it ``challenger``, and ``champion`` when
    :func:`~pnoc.serving.decide` prefers it to the current champion (whose value is read from
    its version tag). Returns the decision record."""
    client = MlflowClient()
    before = current_champion(client, model_name, metric_name)
    value = float(metric_value) if metric_value is not None else None
    version_tags = {
        **{k: str(v) for k, v in (tags or {}).items()},
        METRIC_TAG: metric_name,
        VALUE_TAG: repr(value),
    }
    version_tags[WEIGHTS_TAG] = _logged_weights_sha256(model_uri)
    mv = mlflow.register_model(model_uri, model_name, tags=version_tags)
    version = int(mv.version)
    client.set_registered_model_alias(model_name, CHALLENGER, str(version))

    decision = decide(value, before["value"] if before else None)
    reason = decision.reason
    if before is not None and before["value"] is None and decision.promote:
        reason = (
            f"champion v{before['version']} records no '{metric_name}' "
            f"(it was ranked by '{before['metric']}'): {value:.4f} becomes the champion"
        )
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION, str(version))
    champion = version if decision.promote else (before["version"] if before else None)
    finite = value is not None and math.isfinite(value)
    return {
        "model_name": model_name,
        "version": version,
        "model_uri": f"models:/{model_name}/{version}",
        "metric": metric_name,
        "value": value if finite else None,
        "champion_before": (
            {"version": before["version"], "value": before["value"]} if before else None
        ),
        "promoted": decision.promote,
        "reason": reason,
        "champion": champion,
        "challenger": version,
    }


def _logged_weights_sha256(model_uri: str) -> str:
    """The checkpoint hash a just-logged model records in its ``segmenter.json``."""
    os.environ.setdefault(PROGRESS_BAR_ENV, "false")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        return str(read_config(data_folder(local, model_uri))["weights_sha256"])


# --------------------------------------------------------------------------------------------
# Loading a registered version safely


def registered_version(model_uri: str) -> Any | None:
    """The registry's ModelVersion behind ``models:/<name>@<alias>`` or ``models:/<name>/<n>``;
    None for other URIs (a run's or a logged model's own)."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri[len("models:/") :].strip("/")
    client = MlflowClient()
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = rest.partition("/")
        if number.isdigit():
            return client.get_model_version(name, number)
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0]
        raise PnocError(
            f"{model_uri}: not found in the registry at {mlflow.get_tracking_uri()} ({first})"
        ) from None
    return None


def fetch_verified(model_uri: str, dst: Path) -> Path:
    """Download ``model_uri`` into ``dst`` and return its local folder, after checking that its
    ``MLmodel`` loads through this package's loader (nothing pickled, no code from the artifact
    store) and that its checkpoint has the SHA-256 registered in the version's tags (the hash
    in ``segmenter.json`` for a model that is not registered)."""
    version = registered_version(model_uri)
    os.environ.setdefault(PROGRESS_BAR_ENV, "false")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    except (MlflowException, OSError) as exc:
        first = str(getattr(exc, "message", exc)).strip().splitlines()[0]
        raise PnocError(
            f"{model_uri}: cannot download the model from {mlflow.get_tracking_uri()} ({first})"
        ) from None
    data = data_folder(local, model_uri)
    if version is None:
        check_weights(data, str(read_config(data)["weights_sha256"]), CONFIG_FILE)
        return local
    expected = (version.tags or {}).get(WEIGHTS_TAG)
    if not expected:
        raise PnocError(
            f"{model_uri}: version {version.version} of {version.name} records no {WEIGHTS_TAG} "
            "tag (it was registered before checkpoints were hashed); register it again with "
            "`dvc repro register`"
        )
    check_weights(data, expected, f"tag {WEIGHTS_TAG} of {version.name} v{version.version}")
    return local


def data_folder(local: Path, model_uri: str) -> Path:
    """The data folder of a downloaded model, after checking its ``MLmodel`` loads through this
    package's loader and nothing else."""
    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PnocError(f"{model_uri}: cannot read its MLmodel file ({exc})") from None
    flavor = (mlmodel.get("flavors") or {}).get("python_function") or {}
    if (
        flavor.get("loader_module") != LOADER_MODULE
        or flavor.get("python_model")
        or flavor.get("code")
    ):
        how = flavor.get("loader_module") or "a pickled python_model"
        raise PnocError(
            f"{model_uri}: its MLmodel loads through {how}; pnoc loads only models whose code is "
            f"the installed {LOADER_MODULE} (a pickled model would run code from the artifact "
            "store). Log and register it again with `dvc repro register`"
        )
    data = (local / str(flavor.get("data", ""))).resolve()
    if not data.is_relative_to(local.resolve()) or not data.is_dir():
        raise PnocError(f"{model_uri}: its MLmodel names no data folder inside the model")
    return data


@contextlib.contextmanager
def load_verified(model_uri: str) -> Iterator[Any]:
    """The pyfunc model of ``model_uri``, loaded after :func:`fetch_verified`."""
    with tempfile.TemporaryDirectory(prefix="pnoc-model-") as tmp:
        local = fetch_verified(model_uri, Path(tmp))
        yield mlflow.pyfunc.load_model(str(local))

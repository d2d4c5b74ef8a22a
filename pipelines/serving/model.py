"""The segmenter as an MLflow model whose code is the installed package, never the artifact store.

The model is logged with MLflow's ``loader_module`` flavour: its ``MLmodel`` names this module,
and its data folder holds the DeepLabV3+ checkpoint (read with ``torch.load(weights_only=True)``)
and ``segmenter.json`` (test-time scales, flip, the checkpoint's SHA-256). Loading it imports
this module from the installed ``pnoc`` distribution and reads those two files: no pickle, no
code file from the artifact store is executed. :func:`_load_pyfunc` refuses a checkpoint whose
hash differs from the one written beside it; ``pnoc serve`` and ``pnoc predict`` also check it
against the hash in the registered version's tags, which lives in the tracking database rather
than the (often more widely writable) artifact store.

Request payloads (``POST /invocations``, ``Content-Type: application/json``):

- encoded images, one per row (PNG or JPEG, base64)::

    {"dataframe_split": {"columns": ["image"], "data": [["iVBORw0KGgo..."], ["/9j/4AAQ..."]]}}

  also ``{"inputs": ["iVBORw0KGgo...", ...]}`` and ``{"inputs": {"image": ["iVBOR..."]}}``.
- pixel arrays, integers 0..255 (JSON has no uint8: any integers in range are accepted)::

    {"inputs": [[[r, g, b], ...], ...]}               one H×W×3 image
    {"inputs": [[[[r, g, b], ...], ...], ...]}        a batch N×H×W×3 (or a list of images of
                                                      different sizes)

- ``"params": {"probabilities": true}`` next to either adds the class probabilities.

Response: ``{"predictions": [{"mask": [[0, 0, 15, ...], ...]}, ...]}``, one H×W class-index
mask per image at the image's size (with ``"probabilities"``: C×H×W floats per image). Limits
on a request are :class:`pnoc.serving.ServingLimits`.

Why the signature is ``image: Any``: the server parses and enforces the signature before the
model sees the request. A tensor signature rejects the base64 dataframe, and a typed column
(``string``/``binary``) casts pixel arrays to text/bytes. A single column of MLflow's
``AnyType`` keeps both: the server names every ``inputs`` list after that column and builds a
DataFrame from it, so a batch arrives as one image per row, and a single H×W×3 image arrives as
H rows of W×3 pixels, which :func:`image_inputs` stacks back into one image.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    DEADLINE_EXCEEDED,
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
)

from pnoc.errors import PnocError
from pnoc.serving import (
    ImageInput,
    PayloadError,
    RequestTimeout,
    Segmenter,
    ServerBusy,
    ServingLimits,
    check_batch_size,
    check_request,
    peek_image,
)

LOADER_MODULE = __name__
#: The ``time.monotonic()`` by which the current request must be answered, set by ``pnoc
#: serve``'s guard when the request arrives (MLflow runs ``predict`` in a thread that copies it).
REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pnoc_request_deadline", default=None
)
INPUT_COLUMN = "image"
WEIGHTS_FILE = "deeplab.pt"
CONFIG_FILE = "segmenter.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KeptMessage(MlflowException):
    """An error answered with its own message and HTTP status.

    The scoring server rewrites the ``message`` of an MlflowException raised by ``predict`` into
    ``"Failed to predict data '<repr of the whole input>'. Error: ..."``, which puts a multi-line
    dump of the payload before the reason; this class keeps the first message it is given.
    """

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(message, error_code=error_code)

    @property  # type: ignore[override]
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


# --------------------------------------------------------------------------------------------
# Input parsing


def _depth(value: Any) -> int:
    """Nesting depth of lists/arrays (0 for a scalar), following first elements."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value.ndim
    if isinstance(value, list | tuple | np.ndarray):
        return 1 + (_depth(value[0]) if len(value) else 0)
    return 0


def _is_encoded(value: Any) -> bool:
    return isinstance(value, str | bytes | bytearray)


def image_inputs(model_input: Any, limits: ServingLimits | None = None) -> list[ImageInput]:
    """The images of one request (see the module docstring), sizes read and checked, pixels of
    encoded images not decoded yet. Raises :class:`~pnoc.serving.PayloadError` naming the
    first bad value."""
    limits = limits or ServingLimits()
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise PayloadError(
                f"no '{INPUT_COLUMN}' column (got {list(model_input.columns)[:5]}); send "
                f'{{"dataframe_split": {{"columns": ["{INPUT_COLUMN}"], "data": [[...]]}}}}'
            )
        cells = model_input[INPUT_COLUMN].tolist()
    elif isinstance(model_input, np.ndarray):
        cells = [model_input] if model_input.ndim <= 3 else list(model_input)
    elif isinstance(model_input, Mapping) and INPUT_COLUMN in model_input:
        return image_inputs(pd.DataFrame({INPUT_COLUMN: list(model_input[INPUT_COLUMN])}), limits)
    elif isinstance(model_input, list | tuple):
        cells = list(model_input)
    else:
        raise PayloadError(f"unsupported input of type {type(model_input).__name__}")

    # One H×W×3 image sent as {"inputs": [[[r, g, b], ...], ...]} arrives as H rows of W×3.
    if cells and all(not _is_encoded(c) and c is not None and _depth(c) == 2 for c in cells):
        refs = [peek_image(cells, where=INPUT_COLUMN, limits=limits)]
        check_request(refs, limits)
        return refs

    values: list[tuple[str, Any]] = []
    for i, cell in enumerate(cells):
        if (
            isinstance(cell, list | tuple | np.ndarray)
            and len(cell)
            and all(map(_is_encoded, cell))
        ):
            values += [(f"{INPUT_COLUMN}[{i}][{j}]", v) for j, v in enumerate(cell)]
        else:
            values.append((f"{INPUT_COLUMN}[{i}]", cell))
    check_batch_size(len(values), limits)  # before any image is read
    refs = [peek_image(v, where=where, limits=limits) for where, v in values]
    check_request(refs, limits)
    return refs


def images_from_input(model_input: Any, limits: ServingLimits | None = None) -> list[np.ndarray]:
    """The decoded images of one request, each H×W×3 uint8."""
    return [ref.decode() for ref in image_inputs(model_input, limits)]


# --------------------------------------------------------------------------------------------
# The model MLflow loads


class SegmenterPyfunc:
    """What MLflow's ``load_model`` returns the ``predict`` of: requests in, masks out."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def get_raw_model(self) -> Segmenter:
        """The :class:`~pnoc.serving.Segmenter` (MLflow's ``PyFuncModel.get_raw_model``)."""
        return self.segmenter

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        limits = self.segmenter.limits
        with_probs = bool((params or {}).get("probabilities"))
        try:
            refs = image_inputs(model_input, limits)
            results = self.segmenter.predict(
                refs, with_probs=with_probs, deadline=REQUEST_DEADLINE.get()
            )
        except PayloadError as exc:
            raise KeptMessage(str(exc)) from None
        except ServerBusy as exc:
            raise KeptMessage(str(exc), REQUEST_LIMIT_EXCEEDED) from None
        except RequestTimeout as exc:
            raise KeptMessage(str(exc), DEADLINE_EXCEEDED) from None
        if with_probs:
            return pd.DataFrame(
                {"mask": [m for m, _ in results], "probabilities": [p for _, p in results]}
            )
        return pd.DataFrame({"mask": [m for m, _ in results]})


def read_config(folder: Path) -> dict[str, Any]:
    """``segmenter.json`` of a logged model's data folder, checked."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PnocError(f"{path}: cannot read the segmenter's config ({exc})") from None
    if not isinstance(config, dict) or not {"scales", "flip", "weights_sha256"} <= set(config):
        raise PnocError(f"{path}: expected keys 'scales', 'flip' and 'weights_sha256'")
    return config


def check_weights(folder: Path, expected_sha256: str, source: str) -> Path:
    """The checkpoint in ``folder``, if its SHA-256 is ``expected_sha256`` (from ``source``)."""
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PnocError(f"{weights}: the model's checkpoint is missing")
    actual = sha256_of(weights)
    if actual != expected_sha256:
        raise PnocError(
            f"{weights}: SHA-256 {actual} differs from {expected_sha256} recorded in {source}; "
            "the artifact was changed after it was logged, and is not loaded"
        )
    return weights


def _load_pyfunc(data_path: str) -> SegmenterPyfunc:
    """MLflow's entry point for the ``loader_module`` flavour."""
    folder = Path(data_path)
    config = read_config(folder)
    weights = check_weights(folder, str(config["weights_sha256"]), CONFIG_FILE)
    segmenter = Segmenter.from_checkpoint(
        weights, config["scales"], config["flip"], limits=ServingLimits.from_env()
    )
    return SegmenterPyfunc(segmenter)

"""The segmenter as an MLflow pyfunc model: logging, registry aliases, and the scoring server.

Request payloads (``POST /invocations``, ``Content-Type: application/json``) to
``mlflow models serve -m models:/pnoc-segmenter@champion --env-manager local``:

- encoded images, one per row (PNG or JPEG, base64)::

    {"dataframe_split": {"columns": ["image"], "data": [["iVBORw0KGgo..."], ["/9j/4AAQ..."]]}}

  also ``{"inputs": ["iVBORw0KGgo...", ...]}`` and ``{"inputs": {"image": ["iVBOR..."]}}``.
- pixel arrays, integers 0..255 (JSON has no uint8: any integers in range are accepted)::

    {"inputs": [[[r, g, b], ...], ...]}               one H×W×3 image
    {"inputs": [[[[r, g, b], ...], ...], ...]}        a batch N×H×W×3 (or a list of images of
                                                      different sizes)

- ``"params": {"probabilities": true}`` next to either adds the class probabilities.

Response: ``{"predictions": [{"mask": [[0, 0, 15, ...], ...]}, ...]}``, one H×W class-index
mask per image at the image's size (with ``"probabilities"``: C×H×W floats per image).
A bad image gets HTTP 400 ``{"error_code": "INVALID_PARAMETER_VALUE", "message": "image[0]:
..."}``.

Why the signature is ``image: Any``: the server parses and enforces the signature before the
model sees the request. A tensor signature rejects the base64 dataframe, and a typed column
(``string``/``binary``) casts pixel arrays to text/bytes. A single column of MLflow's
``AnyType`` keeps both: the server names every ``inputs`` list after that column and builds a
DataFrame from it, so a batch arrives as one image per row, and a single H×W×3 image arrives as
H rows of W×3 pixels, which :func:`images_from_input` stacks back into one image. Validation is
ours (:mod:`pnoc.serving`), with messages that name the value at fault.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from pnoc.errors import PnocError
from pnoc.serving import (
    PayloadError,
    Segmenter,
    check_batch_size,
    decide,
    decode_image,
    encode_image_b64,
)

INPUT_COLUMN = "image"
CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "pnoc.metric"
VALUE_TAG = "pnoc.metric_value"
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


class RejectedInput(MlflowException):
    """A bad request (HTTP 400) whose message stays ours.

    The scoring server rewrites the ``message`` of an MlflowException raised by ``predict`` into
    ``"Failed to predict data '<repr of the whole input>'. Error: ..."``, which puts a multi-line
    dump of the payload before the reason; this class keeps the first message it is given.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

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


def images_from_input(model_input: Any) -> list[np.ndarray]:
    """The images of one request (see the module docstring), each H×W×3 uint8.

    Raises :class:`~pnoc.serving.PayloadError` naming the first bad value.
    """
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise PayloadError(
                f"no '{INPUT_COLUMN}' column (got {list(model_input.columns)}); send "
                f'{{"dataframe_split": {{"columns": ["{INPUT_COLUMN}"], "data": [[...]]}}}}'
            )
        cells = model_input[INPUT_COLUMN].tolist()
    elif isinstance(model_input, np.ndarray):
        cells = [model_input] if model_input.ndim <= 3 else list(model_input)
    elif isinstance(model_input, Mapping) and INPUT_COLUMN in model_input:
        return images_from_input(pd.DataFrame({INPUT_COLUMN: list(model_input[INPUT_COLUMN])}))
    elif isinstance(model_input, list | tuple):
        cells = list(model_input)
    else:
        raise PayloadError(f"unsupported input of type {type(model_input).__name__}")

    # One H×W×3 image sent as {"inputs": [[[r, g, b], ...], ...]} arrives as H rows of W×3.
    if cells and all(not _is_encoded(c) and c is not None and _depth(c) == 2 for c in cells):
        return [decode_image(cells, where=INPUT_COLUMN)]

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
    check_batch_size(len(values))
    return [decode_image(v, where=where) for where, v in values]


# --------------------------------------------------------------------------------------------
# The pyfunc model


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """Artifacts: ``checkpoint`` (a DeepLabV3+ :func:`~pnoc.models.backbones.save_model` file)
    and ``config`` (JSON: ``{"scales": [...], "flip": bool}``)."""

    def load_context(self, context: Any) -> None:
        config = json.loads(Path(context.artifacts["config"]).read_text())
        self.segmenter = Segmenter.from_checkpoint(
            context.artifacts["checkpoint"], config["scales"], config["flip"]
        )

    # MLflow reads the type hint of model_input; pd.DataFrame is one it derives no signature
    # from, and what the column signature hands over.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        try:
            images = images_from_input(model_input)
        except PnocError as exc:
            raise RejectedInput(str(exc)) from None
        if (params or {}).get("probabilities"):
            results = self.segmenter.predict_with_probs(images)
            return pd.DataFrame(
                {"mask": [m for m, _ in results], "probabilities": [p for _, p in results]}
            )
        return pd.DataFrame({"mask": self.segmenter.predict(images)})


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

    The served code is the installed ``pnoc``/``pipelines`` packages (pinned in the model's
    requirements), as in the Docker image.
    """
    checkpoint = Path(checkpoint)
    Segmenter.from_checkpoint(checkpoint, scales, flip)  # fail here, not in the server
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "segmenter.json"
        config.write_text(json.dumps({"scales": [float(s) for s in scales], "flip": bool(flip)}))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=SegmenterModel(),
            artifacts={"checkpoint": str(checkpoint), "config": str(config)},
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


# --------------------------------------------------------------------------------------------
# The scoring server (tests, benchmark)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, payload: Any, timeout: float = 120) -> tuple[int, Any]:
    """POST JSON; (HTTP status, decoded JSON body, or the text when it is not JSON)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url, body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@contextlib.contextmanager
def scoring_server(
    model_uri: str,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 180,
) -> Iterator[str]:
    """Run ``mlflow models serve`` (local environment, one worker) and yield its base URL once
    ``/ping`` answers; the whole process group is stopped on exit."""
    port = port or free_port()
    bindir = str(Path(sys.executable).parent)
    run_env = dict(os.environ if env is None else env)
    run_env["PATH"] = bindir + os.pathsep + run_env.get("PATH", "")  # the server runs `uvicorn`
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "-h", host, "-p", str(port), "-w", "1"]
    url = f"http://{host}:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-3000:]
                    state = "exited" if proc.poll() is not None else "did not answer /ping"
                    raise PnocError(f"mlflow models serve {model_uri} {state}:\n{tail}")
                try:
                    with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.25)
            yield url
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (uvicorn runs as a child), then kill it if needed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue

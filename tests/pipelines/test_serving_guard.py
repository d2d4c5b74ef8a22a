"""The served model against hostile or heavy use: `pnoc serve` on 127.0.0.1 with a real MLflow
store, and loading a tampered artifact.

- one 4096² image is answered at its size within 2 GiB of server memory; 8 at once stay within
  3 GiB, each answered or refused, and the server keeps answering;
- wrong columns, scalars, dicts, bad params, JSON nested 1,000 and 100,000 deep and oversized
  bodies each get one 4xx line that does not echo the payload;
- a request past its deadline stops its work (504) and one that finds no free slot gets 429;
- a checkpoint or MLmodel changed in the artifact store is refused before anything of it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pnoc.errors import PnocError
from pnoc.serving import encode_image_b64
from pnoc_pipelines import serving, tracking

NAME = "pnoc-segmenter-guard"
GIB = 2**30
MARKER = "pnoc-tamper-marker"


def _register(tmp: Path) -> str:
    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus

    torch.manual_seed(0)
    ckpt = tmp / "deeplab.pt"
    save_model(ckpt, DeepLabV3Plus("efficientnet_lite0", 6), {})
    tracking.configure()
    with mlflow.start_run():
        info = serving.log_segmenter(ckpt, scales=[1.0], flip=True)
    serving.register(info.model_uri, NAME, metric_name="miou", metric_value=0.5)
    return f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store holding NAME v1 (a random-weight DeepLabV3+ as the embedded default's,
    6 classes) as @champion; yields the tracking URI."""
    tmp = tmp_path_factory.mktemp("guard")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(tracking.PIPELINE_ENV, raising=False)
        mp.chdir(tmp)
        _register(tmp)
        yield uri


def _env(store: str, **limits: object) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    env.update({f"PNOC_SERVE_{k.upper()}": str(v) for k, v in limits.items()})
    return env


def _png_request(side: int) -> bytes:
    """A smooth ``side``² PNG (compresses like a photo), as a dataframe_split request."""
    y, x = np.mgrid[0:side, 0:side]
    image = np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side], -1)
    payload = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_b64(image)]]}}
    return json.dumps(payload).encode()


def _is_one_line_error(body: object, limit: int = serving.server.MAX_MESSAGE) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error_code", "message"}
        and "\n" not in body["message"]
        and len(body["message"]) <= limit
    )


@pytest.mark.slow
def test_large_images_are_answered_within_the_memory_bounds(store):
    big = _png_request(4096)
    small = _png_request(64)
    with serving.scoring_server(
        f"models:/{NAME}@champion", env=_env(store, timeout_s=15)
    ) as server:
        inv = server.url + "/invocations"
        with serving.PeakRss(server.proc.pid) as one:
            status, body = serving.post_json(inv, big, timeout=300)
        assert status == 200, body
        mask = body["predictions"][0]["mask"]
        assert len(mask) == 4096 and len(mask[0]) == 4096
        del body, mask
        assert one.peak <= 2 * GIB, f"peak RSS {one.peak / GIB:.2f} GiB for one 4096² request"

        with serving.PeakRss(server.proc.pid) as many, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: serving.post_json(inv, big, 300)[0], range(8)))
        assert set(statuses) <= {200, 429} and 200 in statuses, statuses
        assert many.peak <= 3 * GIB, f"peak RSS {many.peak / GIB:.2f} GiB for 8 at once"
        assert server.alive() and serving.post_json(inv, small)[0] == 200


@pytest.mark.slow
def test_bad_requests_get_one_line_that_does_not_echo_them(store):
    secret = "x" * 5000
    ok = json.loads(_png_request(32))
    cases = {
        "wrong column": {"dataframe_split": {"columns": [secret[:80]], "data": [["aGk="]]}},
        "scalar": {"inputs": 5},
        "dict": {"inputs": {"not_image": [secret]}},
        "bad param": {**ok, "params": {"probabilities": "yes please " + secret}},
        "unknown key": {"secret": secret},
        "nested 1000 deep": b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    }
    with serving.scoring_server(
        f"models:/{NAME}@champion", env=_env(store, max_body_bytes=250_000)
    ) as server:
        inv = server.url + "/invocations"
        for case, payload in cases.items():
            status, body = serving.post_json(inv, payload)
            assert 400 <= status < 500, (case, status, body)
            assert _is_one_line_error(body), (case, body)
            assert "x" * 60 not in body["message"], (case, body)
        deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, body = serving.post_json(inv, deep)
        assert status == 400 and _is_one_line_error(body), (status, body)
        status, body = serving.post_json(inv, b'{"inputs": "' + b"a" * 300_000 + b'"}')
        assert status == 413 and _is_one_line_error(body), (status, body)
        assert "limit is 250000" in body["message"]
        status, body = serving.post_json(inv, {**ok, "params": {"probabilities": True}})
        assert status == 200 and len(body["predictions"][0]["probabilities"]) == 6
        assert serving.post_json(inv, _png_request(600))[0] == 200
        status, body = serving.post_json(
            inv, {**json.loads(_png_request(600)), "params": {"probabilities": True}}
        )
        assert status == 400 and "probabilities are returned for images of at most" in str(body)
        assert server.alive() and serving.post_json(inv, ok)[0] == 200


@pytest.mark.slow
def test_a_request_past_its_deadline_stops_and_a_waiting_one_is_refused(store):
    image = encode_image_b64(np.zeros((256, 256, 3), np.uint8))
    long = {"dataframe_split": {"columns": ["image"], "data": [[image]] * 64}}
    with serving.scoring_server(
        f"models:/{NAME}@champion", env=_env(store, timeout_s=2, max_concurrent=1)
    ) as server:
        inv = server.url + "/invocations"
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(serving.post_json, inv, long)
            time.sleep(0.5)
            second = pool.submit(serving.post_json, inv, long)
            (s1, b1), (s2, b2) = first.result(), second.result()
        assert s1 == 504 and _is_one_line_error(b1), (s1, b1)
        assert (
            b1["message"].startswith("request took longer than 2 s;")
            and "of 64 images" in (b1["message"])
        )
        # It waited for the first one's slot: refused when the wait ran out, or stopped at
        # once for want of time left.
        assert _is_one_line_error(b2), (s2, b2)
        assert (s2, b2["message"][:11]) in {(429, "server busy"), (504, "request too")}, b2
        status, body = serving.post_json(inv, json.loads(_png_request(32)))
        assert status == 200, body


# -- tampered artifacts ------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def tamper_store(tmp_path, monkeypatch):
    """A fresh store with NAME v1, and the local folder of its artifacts."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tracking.PIPELINE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    uri = _register(tmp_path)
    location = MlflowClient().get_model_version_download_uri(NAME, "1")
    folder = Path(location.removeprefix("file://"))
    assert (folder / "MLmodel").is_file()
    return uri, folder, tmp_path / MARKER


def test_a_changed_checkpoint_is_refused_and_never_unpickled(tamper_store):
    uri, folder, marker = tamper_store
    weights = folder / "data" / "segmenter" / "deeplab.pt"
    torch.save({"state_dict": _Payload(marker), "meta": {}}, weights)
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(PnocError, match=r"deeplab.pt: SHA-256 \w+ differs from \w+ recorded in"):
        serving.fetch_verified(uri, Path(os.getcwd()) / "download")
    with pytest.raises(Exception, match="SHA-256"):
        mlflow.pyfunc.load_model(uri)  # MLflow's own loader: the data folder's hash
    config = folder / "data" / "segmenter" / "segmenter.json"
    data = json.loads(config.read_text())
    data["weights_sha256"] = serving.model.sha256_of(weights)
    config.write_text(json.dumps(data))  # both files changed: weights_only refuses the pickle
    with pytest.raises(Exception, match="cannot read checkpoint"):
        mlflow.pyfunc.load_model(uri)
    with pytest.raises(PnocError, match="differs from .* recorded in tag pnoc.weights_sha256"):
        serving.fetch_verified(uri, Path(os.getcwd()) / "download2")

    proc = subprocess.run(
        [sys.executable, "-m", "pnoc_pipelines.cli", "serve", "-m", uri, "--port", "1"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1].startswith("error: ")
    assert "SHA-256" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


def test_a_model_rewritten_to_load_pickled_code_is_refused(tamper_store):
    uri, folder, marker = tamper_store
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    flavor.pop("loader_module")
    flavor["python_model"] = "python_model.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(PnocError, match="loads through a pickled python_model; pnoc loads only"):
        serving.fetch_verified(uri, Path(os.getcwd()) / "download")
    assert not marker.exists()

"""The segmenter pyfunc: request parsing, in-process prediction, the real server, `pnoc predict`."""

from __future__ import annotations

import struct
import sys
import zlib

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pnoc.serving import PayloadError, encode_image_b64
from pnoc_pipelines import serving, tracking

NAME = "pnoc-segmenter-test"
RNG = np.random.default_rng(0)


def image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_declaring(width: int, height: int) -> str:
    """Base64 of a 1×1 PNG whose header claims ``width``×``height`` pixels."""
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return base64.b64encode(bytes(data)).decode()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store holding NAME v1 (a random-weight DeepLabV3+ resnet18, 3 classes) as
    @champion; yields the tracking URI."""
    import torch

    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus

    tmp = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    ckpt = tmp / "deeplab.pt"
    save_model(ckpt, DeepLabV3Plus("resnet18", 3), {"class_names": ["background", "a", "b"]})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(tracking.PIPELINE_ENV, raising=False)
        mp.chdir(tmp)
        tracking.configure()
        with mlflow.start_run():
            info = serving.log_segmenter(ckpt, scales=[1.0], flip=True)
        serving.register(info.model_uri, NAME, metric_name="miou", metric_value=0.5)
        yield uri


@pytest.fixture
def champion(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")


# -- request parsing (no model) ----------------------------------------------------------


def test_dataframe_of_base64_images():
    a, b = image(5, 7), image(3, 4)
    out = serving.images_from_input(
        pd.DataFrame({"image": [encode_image_b64(a), encode_image_b64(b)]})
    )
    assert [x.shape for x in out] == [(5, 7, 3), (3, 4, 3)] and np.array_equal(out[0], a)


def test_one_image_split_into_rows_is_stacked_back():
    a = image(6, 5)
    # how the server hands over {"inputs": a.tolist()}: one row per image row
    out = serving.images_from_input(pd.DataFrame({"image": a.tolist()}))
    assert len(out) == 1 and np.array_equal(out[0], a)


def test_batches_and_lists_of_base64():
    a, b = image(4, 4), image(4, 4)
    assert len(serving.images_from_input(pd.DataFrame({"image": [a.tolist(), b.tolist()]}))) == 2
    texts = [encode_image_b64(a), encode_image_b64(b)]
    assert len(serving.images_from_input(pd.DataFrame({"image": [texts]}))) == 2
    assert len(serving.images_from_input(np.stack([a, b]))) == 2


def test_parsing_errors_name_the_row():
    with pytest.raises(PayloadError, match=r"^image\[1\]: not a PNG or JPEG"):
        serving.images_from_input(pd.DataFrame({"image": [encode_image_b64(image(2, 2)), "aGk="]}))
    with pytest.raises(PayloadError, match="no 'image' column"):
        serving.images_from_input(pd.DataFrame({"img": ["x"]}))


def test_kept_message_keeps_its_message():
    err = serving.KeptMessage("image[0]: bad")
    err.message = f"Failed to predict data '{pd.DataFrame({'image': ['x']})}'. \nError: x"
    assert err.message == "image[0]: bad" and err.get_http_status_code() == 400
    assert '"message": "image[0]: bad"' in err.serialize_as_json()


# -- the pyfunc in-process ---------------------------------------------------------------


def test_pyfunc_predicts_masks_at_input_size(champion):
    a, b = image(20, 30), image(9, 13)
    out = champion.predict(pd.DataFrame({"image": [encode_image_b64(a), b]}))
    assert [m.shape for m in out["mask"]] == [(20, 30), (9, 13)]
    with_probs = champion.predict(pd.DataFrame({"image": [a]}), params={"probabilities": True})
    assert with_probs["probabilities"][0].shape == (3, 20, 30)


def test_logged_model_has_signature_and_example(champion):
    meta = champion.metadata
    assert meta.get_input_schema().input_names() == ["image"]
    assert meta.get_params_schema().params[0].name == "probabilities"
    assert meta.saved_input_example_info is not None


# -- the real scoring server -------------------------------------------------------------


def _first_line(body) -> str:
    assert isinstance(body, dict), body
    return body["message"].splitlines()[0]


@pytest.mark.slow
def test_scoring_server_takes_both_payloads_and_refuses_bad_ones(store):
    import os

    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    png = image(24, 40)
    arr = image(16, 20)
    with serving.scoring_server(f"models:/{NAME}@champion", env=env) as server:
        inv = server.url + "/invocations"
        df = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_b64(png)]]}}
        status, body = serving.post_json(inv, df)
        assert status == 200, body
        assert np.asarray(body["predictions"][0]["mask"]).shape == (24, 40)

        status, body = serving.post_json(inv, {"inputs": arr.tolist()})
        assert status == 200, body
        assert [np.asarray(p["mask"]).shape for p in body["predictions"]] == [(16, 20)]

        batch = {"inputs": [arr.tolist(), arr.tolist()], "params": {"probabilities": True}}
        status, body = serving.post_json(inv, batch)
        assert status == 200, body
        assert [np.asarray(p["mask"]).shape for p in body["predictions"]] == [(16, 20)] * 2
        assert np.asarray(body["predictions"][0]["probabilities"]).shape == (3, 16, 20)

        bad = {
            "not an image": (
                {"dataframe_split": {"columns": ["image"], "data": [["aGVsbG8gd29ybGQ="]]}},
                "image[0]: not a PNG or JPEG image",
            ),
            "float array": ({"inputs": (arr / 255.0).tolist()}, "image: floating-point values"),
            "empty list": ({"inputs": []}, "image[0]: empty array"),
            "huge size": (
                {
                    "dataframe_split": {
                        "columns": ["image"],
                        "data": [[png_declaring(10**5, 10**5)]],
                    }
                },
                "image[0]: declared size",
            ),
            "out of range": ({"inputs": [[[0, 300, 0]]]}, "image: values range over 0..300"),
        }
        for case, (payload, expected) in bad.items():
            status, body = serving.post_json(inv, payload)
            assert 400 <= status < 500, (case, status, body)
            line = _first_line(body)
            assert line.startswith(expected), (case, line)
            assert "Traceback" not in body["message"]

        status, body = serving.post_json(inv, b"{not json")
        assert 400 <= status < 500 and "valid JSON" in _first_line(body)

        status, body = serving.post_json(inv, df)  # still serving
        assert status == 200 and np.asarray(body["predictions"][0]["mask"]).shape == (24, 40)


# -- pnoc predict ------------------------------------------------------------------------


def _pnoc(monkeypatch, *args: str) -> int:
    from pnoc_pipelines import cli

    monkeypatch.setattr(sys, "argv", ["pnoc", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_pnoc_predict_writes_masks_and_overlays(champion, store, tmp_path, monkeypatch, capsys):
    Image.fromarray(image(21, 33)).save(tmp_path / "a.png")
    Image.fromarray(image(12, 8)).save(tmp_path / "b.jpg", quality=95)
    out = tmp_path / "out"
    model = f"models:/{NAME}@champion"
    code = _pnoc(
        monkeypatch, "predict", "--model", model, str(tmp_path / "a.png"), str(tmp_path / "b.jpg"),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    for stem, (h, w) in {"a": (21, 33), "b": (12, 8)}.items():
        with Image.open(out / f"{stem}_mask.png") as m:
            assert m.mode == "P" and m.size == (w, h) and max(np.asarray(m).ravel()) < 3
        with Image.open(out / f"{stem}_overlay.png") as o:
            assert o.mode == "RGB" and o.size == (w, h)


def test_pnoc_predict_errors(champion, store, tmp_path, monkeypatch, capsys):
    Image.fromarray(image(8, 8)).save(tmp_path / "a.png")
    code = _pnoc(monkeypatch, "predict", str(tmp_path / "missing.png"), "--out", str(tmp_path))
    assert code == 1 and "missing.png: image file not found" in capsys.readouterr().err
    code = _pnoc(
        monkeypatch, "predict", "--model", "models:/no-such-model@champion",
        str(tmp_path / "a.png"), "--out", str(tmp_path),
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(
        "error: models:/no-such-model@champion: not found in the registry"
    )
    assert "Traceback" not in err

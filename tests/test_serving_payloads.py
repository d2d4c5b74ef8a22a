"""The serving logic without MLflow: champion policy, payload decoding/validation, the segmenter."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pnoc import serving
from pnoc.errors import PnocError
from pnoc.serving import (
    PayloadError,
    Segmenter,
    ServingLimits,
    as_image_array,
    decide,
    decode_image,
    decode_image_bytes,
    encode_image_b64,
)


def _encode(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose IHDR is rewritten to claim ``width``×``height`` (CRC fixed)."""
    data = bytearray(_encode(np.zeros((1, 1, 3), np.uint8)))
    ihdr = bytearray(data[12:29])  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)


# -- champion policy ---------------------------------------------------------------------


def test_no_champion_promotes():
    d = decide(0.3, None)
    assert d.promote and "no champion" in d.reason


def test_strictly_better_promotes_and_ties_keep_the_champion():
    assert decide(0.51, 0.5).promote
    assert not decide(0.49, 0.5).promote
    tie = decide(0.5, 0.5)
    assert not tie.promote and "tie" in tie.reason


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_missing_or_non_finite_value_never_promotes(bad):
    assert not decide(bad, None).promote
    assert not decide(bad, 0.1).promote


def test_champion_without_a_number_loses():
    assert decide(0.1, float("nan")).promote


# -- payloads ----------------------------------------------------------------------------


def test_png_and_jpeg_bytes_and_base64(rgb):
    assert np.array_equal(decode_image_bytes(_encode(rgb)), rgb)
    assert np.array_equal(decode_image_bytes(encode_image_b64(rgb)), rgb)
    b64 = base64.b64encode(_encode(rgb)).decode()
    assert np.array_equal(decode_image_bytes(f"data:image/png;base64,{b64}"), rgb)
    jpeg = decode_image_bytes(_encode(rgb, "JPEG"))
    assert jpeg.shape == rgb.shape and jpeg.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_other_modes_become_rgb(rgb, mode):
    im = Image.fromarray(rgb).convert(mode)
    out = decode_image_bytes(_encode(im))
    assert out.shape == (12, 17, 3) and out.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello world", "not a PNG or JPEG image"),
        ("aGVsbG8=", "not a PNG or JPEG image"),
        ("not base64 at all!", "not valid base64"),
        (b"", "empty image data"),
        ("", "empty image data"),
    ],
)
def test_bad_image_data_is_named(data, message):
    with pytest.raises(PayloadError, match=message) as exc:
        decode_image_bytes(data, where="image[3]")
    assert str(exc.value).startswith("image[3]: ")


def test_other_formats_are_refused(rgb):
    with pytest.raises(PayloadError, match="not a PNG or JPEG"):
        decode_image_bytes(_encode(rgb, "GIF"))


def test_truncated_png_is_refused(rgb):
    with pytest.raises(PayloadError, match="corrupt or truncated|not a PNG"):
        decode_image_bytes(_encode(rgb)[:-30])


@pytest.mark.parametrize("size", [(5000, 5000), (100_000, 100_000)])
def test_declared_size_over_the_limit_is_refused_before_decoding(size):
    with pytest.raises(PayloadError, match="limit") as exc:
        decode_image_bytes(png_declaring(*size))
    assert "image" in str(exc.value)


def test_byte_limit(rgb):
    limits = serving.ServingLimits(max_bytes=50)
    with pytest.raises(PayloadError, match="limit of 50"):
        decode_image_bytes(_encode(rgb), limits=limits)
    with pytest.raises(PayloadError, match="limit of 50"):
        decode_image_bytes(encode_image_b64(rgb), limits=limits)


def test_arrays(rgb):
    assert as_image_array(rgb) is rgb
    out = as_image_array(rgb.astype(np.int64).tolist())
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.full((4, 4, 3), 0.5), "floating-point values"),
        (np.ones((4, 4, 3), bool), "boolean values"),
        (np.full((4, 4, 3), 256), r"values range over 256\.\.256"),
        (np.full((4, 4, 3), -1), "expected integers 0..255"),
        (np.zeros((4, 4), np.uint8), r"shape \(4, 4\); expected H×W×3"),
        (np.zeros((4, 4, 4), np.uint8), "expected H×W×3"),
        ([], "empty array"),
        (np.zeros((0, 4, 3), np.uint8), "empty array"),
        ([[[1, 2, 3]], [[1, 2]]], "not a rectangular array"),
        ([[["a", "b", "c"]]], "text values"),
    ],
)
def test_bad_arrays_are_named(value, message):
    with pytest.raises(PayloadError, match=message) as exc:
        as_image_array(value, where="image[1]")
    assert str(exc.value).startswith("image[1]: ")


def test_pixel_limit_on_arrays():
    with pytest.raises(PayloadError, match="4×4 pixels, more than the limit of 10"):
        as_image_array(np.zeros((4, 4, 3), np.uint8), limits=serving.ServingLimits(max_pixels=10))


def test_decode_image_dispatches(rgb):
    assert np.array_equal(decode_image(encode_image_b64(rgb)), rgb)
    assert np.array_equal(decode_image(rgb.tolist()), rgb)
    with pytest.raises(PayloadError, match="missing"):
        decode_image(None)


def test_batch_limits():
    with pytest.raises(PayloadError, match="no images"):
        serving.check_batch_size(0)
    with pytest.raises(PayloadError, match="3 images in one request; the limit is 2"):
        serving.check_batch_size(3, serving.ServingLimits(max_images=2))


# -- segmenter ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "deeplab.pt"
    save_model(path, DeepLabV3Plus("resnet18", 3), {"class_names": ["background", "a", "b"]})
    return path


def test_segmenter_masks_at_input_size(tiny_checkpoint, rgb):
    seg = Segmenter.from_checkpoint(tiny_checkpoint, scales=[1.0, 0.5], flip=True)
    assert seg.class_names == ["background", "a", "b"] and seg.num_classes == 3
    small = rgb[:9, :11]
    results = seg.predict([rgb, small])
    masks = [m for m, _ in results]
    assert [m.shape for m in masks] == [(12, 17), (9, 11)]
    assert all(m.dtype == np.uint8 and m.max() < 3 and p is None for m, p in results)
    (mask, probs), _ = seg.predict([rgb, small], with_probs=True)
    assert probs.shape == (3, 12, 17) and np.allclose(probs.sum(0), 1, atol=1e-4)
    assert np.array_equal(mask, masks[0])


def test_large_images_are_segmented_at_the_working_side(tiny_checkpoint):
    """An image over max_side gives the mask of its downscaled copy, scaled back to its size."""
    import torch.nn.functional as F

    from pnoc.serving.segmenter import _resize

    big = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    seg = Segmenter.from_checkpoint(tiny_checkpoint, flip=False, limits=ServingLimits(max_side=60))
    [(mask, _)] = seg.predict([big])
    assert mask.shape == (300, 200)
    small = _resize(big, 60 / 300)
    assert small.shape == (60, 40, 3)
    full = Segmenter.from_checkpoint(tiny_checkpoint, flip=False)
    [(_, probs)] = full.predict([small], with_probs=True)
    import torch

    expected = F.interpolate(torch.as_tensor(probs)[None], (300, 200), mode="bilinear")[0]
    assert np.array_equal(mask, expected.argmax(0).numpy())
    with pytest.raises(PayloadError, match="probabilities are returned for images of at most 60"):
        seg.predict([big], with_probs=True)


def test_segmenter_stops_at_its_deadline_and_when_busy(tiny_checkpoint, rgb):
    import threading

    from pnoc.serving import RequestTimeout, ServerBusy

    seg = Segmenter.from_checkpoint(
        tiny_checkpoint, limits=ServingLimits(timeout_s=0.05, max_concurrent=1)
    )
    with pytest.raises(RequestTimeout, match=r"longer than 0.05 s; \d+ of 400 images"):
        seg.predict([rgb] * 400)
    seg._slots.acquire()  # another request holds the only slot
    try:
        with pytest.raises(ServerBusy, match="1 request"):
            seg.predict([rgb])
    finally:
        seg._slots.release()
    done = []
    threading.Thread(target=lambda: done.append(seg.predict([rgb]))).start()
    for _ in range(200):
        if done:
            break
        threading.Event().wait(0.01)
    assert done and done[0][0][0].shape == (12, 17)


def test_request_pixels_are_bounded_before_decoding(rgb):
    limits = ServingLimits(max_request_pixels=300)
    refs = [serving.peek_image(encode_image_b64(rgb), limits=limits) for _ in range(2)]
    assert [r.pixels for r in refs] == [204, 204] and all(r.array is None for r in refs)
    with pytest.raises(PayloadError, match="2 images of 408 pixels in all, more than the limit"):
        serving.check_request(refs, limits)


def test_limits_from_the_environment():
    limits = ServingLimits.from_env({"PNOC_SERVE_MAX_SIDE": "64", "PNOC_SERVE_TIMEOUT_S": "2.5"})
    assert limits.max_side == 64 and limits.timeout_s == 2.5
    assert ServingLimits.from_env({"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "7"}).timeout_s == 7
    assert ServingLimits.from_env(limits.as_env()) == limits
    with pytest.raises(PnocError, match=r"PNOC_SERVE_MAX_SIDE='big': expected an int"):
        ServingLimits.from_env({"PNOC_SERVE_MAX_SIDE": "big"})
    with pytest.raises(PnocError, match="max_concurrent: expected > 0, got 0"):
        ServingLimits(max_concurrent=0)


def test_segmenter_refuses_bad_class_names(tmp_path):
    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus

    path = tmp_path / "m.pt"
    save_model(path, DeepLabV3Plus("resnet18", 3), {"class_names": ["background", "a"]})
    with pytest.raises(PnocError, match="2 names for 3 classes"):
        Segmenter.from_checkpoint(path)
    with pytest.raises(PnocError, match="checkpoint not found"):
        Segmenter.from_checkpoint(tmp_path / "missing.pt")

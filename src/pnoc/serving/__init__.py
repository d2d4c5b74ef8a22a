"""Serving logic without MLflow: what a request may cost, its payloads, the segmenter, and the
champion policy.

- :class:`ServingLimits`: the bounds on one request and on concurrent work (documented there).
- :func:`peek_image`, :func:`check_request`, :func:`decode_image`: turn request values into
  H×W×3 uint8 RGB images, or raise :class:`PayloadError` saying which value is wrong and why.
- :class:`Segmenter`: a DeepLabV3+ checkpoint with its test-time augmentation, images in,
  class-index masks out.
- :func:`decide`: whether a newly registered model replaces the champion.

The MLflow side (the model flavour, registry aliases, the guarded server) lives in
``pnoc_pipelines.serving``.
"""

from pnoc.serving.limits import ServingLimits
from pnoc.serving.payloads import (
    IMAGE_FORMATS,
    ImageInput,
    PayloadError,
    as_image_array,
    check_batch_size,
    check_request,
    decode_image,
    decode_image_bytes,
    encode_image_b64,
    peek_image,
)
from pnoc.serving.policy import Decision, decide
from pnoc.serving.segmenter import RequestTimeout, Segmenter, ServerBusy, upsampled_argmax

__all__ = [
    "IMAGE_FORMATS",
    "Decision",
    "ImageInput",
    "PayloadError",
    "RequestTimeout",
    "Segmenter",
    "ServerBusy",
    "ServingLimits",
    "as_image_array",
    "check_batch_size",
    "check_request",
    "decide",
    "decode_image",
    "decode_image_bytes",
    "encode_image_b64",
    "peek_image",
    "upsampled_argmax",
]

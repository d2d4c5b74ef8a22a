"""What one request may cost the scoring server, and how to change it.

Every limit is checked before the work it bounds: body size before parsing, each image's
declared size (its PNG/JPEG header) before decoding, the request's total pixels before the
first image is decoded. Large images are segmented at a bounded working resolution
(``max_side``) and their mask is scaled back to the image's size, so the cost of the network
does not grow with the image; at most ``max_concurrent`` requests decode and segment at once,
the others wait for a slot until their deadline (``timeout_s``) and are then refused.

Defaults come from measuring the embedded DeepLabV3+ (EfficientNet-Lite0, flip TTA) on a
2-core CPU: about 0.6 GiB resident for the loaded model, 0.3 GiB more at a 512 px working side
(1.1 GiB at 1024 px); a 4096×4096 image decodes to 48 MiB and its mask to 16 MiB (about 0.2 GiB
as the JSON answer is built). Each limit can be set with an environment variable of the serving
process (``PNOC_SERVE_<NAME>``, e.g. ``PNOC_SERVE_MAX_SIDE=1024``) or a ``pnoc serve`` option.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pnoc.errors import ConfigError

ENV_PREFIX = "PNOC_SERVE_"
#: MLflow's own request deadline (``mlflow models serve --timeout`` sets it), in seconds.
MLFLOW_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


@dataclass(frozen=True)
class ServingLimits:
    #: Largest image, in pixels (height × width), judged from its header before decoding.
    max_pixels: int = 4096 * 4096
    #: Most pixels over all images of one request.
    max_request_pixels: int = 4096 * 4096
    #: Largest encoded image, in bytes.
    max_bytes: int = 32 * 1024 * 1024
    #: Largest request body, in bytes (checked by ``pnoc serve`` before parsing).
    max_body_bytes: int = 64 * 1024 * 1024
    #: Most images in one request.
    max_images: int = 64
    #: Longest side the network sees; larger images are scaled down and their mask scaled up.
    max_side: int = 512
    #: Largest image, in pixels, whose class probabilities may be returned (C floats a pixel).
    max_probability_pixels: int = 512 * 512
    #: Requests decoding and segmenting at the same time; the others wait for a slot.
    max_concurrent: int = 2
    #: Seconds a request may take, waiting included; then its work stops and it is refused.
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ConfigError(f"serving limit {field.name}: expected > 0, got {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingLimits:
        """The defaults, overridden by ``PNOC_SERVE_<NAME>`` variables; ``timeout_s`` also
        follows MLflow's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` when ours is unset."""
        env = os.environ if env is None else env
        values: dict[str, int | float] = {}
        for field in dataclasses.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            text = env.get(name)
            if text is None and field.name == "timeout_s":
                name, text = MLFLOW_TIMEOUT_ENV, env.get(MLFLOW_TIMEOUT_ENV)
            if text is None:
                continue
            kind = float if field.type in (float, "float") else int
            try:
                values[field.name] = kind(text)
            except ValueError:
                raise ConfigError(
                    f"{name}={text!r}: expected a{'' if kind is float else 'n'} "
                    f"{kind.__name__} (serving limit {field.name})"
                ) from None
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The limits as the environment variables :meth:`from_env` reads."""
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

"""The segmenter on MLflow: the model flavour (:mod:`.model`), logging and the registry
(:mod:`.registry`), and ``pnoc serve`` (:mod:`.server`)."""

from pnoc_pipelines.serving.model import (
    INPUT_COLUMN,
    KeptMessage,
    SegmenterPyfunc,
    image_inputs,
    images_from_input,
)
from pnoc_pipelines.serving.registry import (
    CHALLENGER,
    CHAMPION,
    METRIC_TAG,
    SIGNATURE,
    VALUE_TAG,
    WEIGHTS_TAG,
    current_champion,
    fetch_verified,
    load_verified,
    log_segmenter,
    register,
    registered_version,
)
from pnoc_pipelines.serving.server import (
    PeakRss,
    RequestGuard,
    Server,
    free_port,
    one_line,
    post_json,
    scoring_server,
    serve,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "INPUT_COLUMN",
    "METRIC_TAG",
    "SIGNATURE",
    "VALUE_TAG",
    "WEIGHTS_TAG",
    "KeptMessage",
    "PeakRss",
    "RequestGuard",
    "SegmenterPyfunc",
    "Server",
    "current_champion",
    "fetch_verified",
    "free_port",
    "image_inputs",
    "images_from_input",
    "load_verified",
    "log_segmenter",
    "one_line",
    "post_json",
    "register",
    "registered_version",
    "scoring_server",
    "serve",
]

"""Hyperparameter sweeps: search spaces, sweep settings and the objectives trials run.

No tracking and no params.yaml here: ``pipelines/sweep/`` (``pnoc_pipelines.sweep``) drives
Ray Tune, Optuna and MLflow. The objectives (:mod:`pnoc.tune.objectives`, torch) are imported
by the trials only.
"""

from __future__ import annotations

from pnoc.tune.settings import CAM_METRICS, KINDS, PROXY_METRICS, Sweep, load_sweep
from pnoc.tune.space import (
    SearchParam,
    apply_overrides,
    get_dotted,
    params_field,
    parse_space,
    to_optuna,
    to_ray,
    validate_space,
)

__all__ = [
    "CAM_METRICS",
    "KINDS",
    "PROXY_METRICS",
    "SearchParam",
    "Sweep",
    "apply_overrides",
    "get_dotted",
    "load_sweep",
    "params_field",
    "parse_space",
    "to_optuna",
    "to_ray",
    "validate_space",
]

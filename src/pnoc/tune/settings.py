"""Sweep settings (one section of ``pipelines/sweep.yaml``), validated before any trial.

Two sweeps exist:

``saliency``
    C²AM-H trained on the CAMs under ``outputs/cams``; the trial's "epochs" (ASHA's time axis)
    are C²AM-H epochs (``saliency.epochs``). Objectives: ``proxy`` (cheap, default) and
    ``pseudo_masks`` (AffinityNet + random walk after every epoch; the real target, slow).
``adversarial``
    the CAM generator (``cam.*``) trained from the ordinary classifier ``models/oc.pt``; epochs
    are ``cam.epochs``. Objective ``cams``: CAM mIoU on ``cams.eval_split``.

Each objective names the metrics it reports every epoch; the configured ``metric`` must be one of
them, so a sweep can never wait on a metric no trial reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pnoc.config import flatten, parse_params
from pnoc.errors import ConfigError
from pnoc.tune.space import (
    SearchParam,
    apply_overrides,
    get_dotted,
    params_field,
    parse_space,
    validate_space,
)

#: Cheap metrics of the saliency sweep, computed on ``pseudo_masks.split`` after every epoch.
PROXY_METRICS = (
    "cam_saliency_miou",  # CAM argmax inside saliency >= saliency.threshold, background elsewhere
    "saliency_miou",  # fg/bg mIoU of the saliency against the binarised ground truth
    "affinity_label_miou",  # mIoU of the affinity labels over their confident pixels
    "affinity_precision",  # share of confident affinity-label pixels that are right
    "affinity_confident_share",  # share of pixels the affinity labels supervise
)
CAM_METRICS = ("cam_miou", "cam_best_threshold")


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    prefixes: tuple[str, ...]  # params a trial may vary (dotted prefixes or exact keys)


@dataclass(frozen=True)
class Kind:
    epochs_key: str
    default_objective: str
    objectives: Mapping[str, Objective]


KINDS: dict[str, Kind] = {
    "saliency": Kind(
        epochs_key="saliency.epochs",
        default_objective="proxy",
        objectives={
            "proxy": Objective(
                PROXY_METRICS, ("saliency.", "affinity.fg_threshold", "affinity.bg_threshold")
            ),
            "pseudo_masks": Objective(
                (*PROXY_METRICS, "pseudo_mask_miou"), ("saliency.", "affinity.", "pseudo_masks.")
            ),
        },
    ),
    "adversarial": Kind(
        epochs_key="cam.epochs",
        default_objective="cams",
        objectives={"cams": Objective(CAM_METRICS, ("cam.",))},
    ),
}

# Which cam.method uses which sub-section (a search over an unused one is a silent no-op).
_METHOD_SECTIONS = {
    "cam.puzzle.": ("puzzle", "poc", "pnoc"),
    "cam.occse.": ("occse", "poc", "pnoc"),
    "cam.pnoc.": ("pnoc",),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Model):
    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0


class Asha(_Model):
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


class SweepSettings(_Model):
    """One sweep, as written in sweep.yaml (``defaults`` merged under the sweep's section)."""

    objective: str | None = None
    metric: str
    mode: Literal["max", "min"] = "max"
    epochs: Annotated[int, Field(ge=1)]
    num_samples: Annotated[int, Field(ge=1)] = 8
    max_concurrent: Annotated[int, Field(ge=1)] = 1
    resources: Resources = Resources()
    seed: Annotated[int, Field(ge=0)] = 0
    asha: Asha = Asha()
    space: list[Any]
    overrides: dict[str, Any] = {}


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: settings plus the parsed space, ready for the driver."""

    kind: str
    settings: SweepSettings
    objective: str
    space: tuple[SearchParam, ...]
    base_params: dict[str, Any]  # params.yaml + overrides + epochs: what every trial starts from

    @property
    def metric(self) -> str:
        return self.settings.metric

    @property
    def metrics(self) -> tuple[str, ...]:
        return KINDS[self.kind].objectives[self.objective].metrics

    def trial_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Raw params of one trial: the base with the trial's dotted values."""
        return apply_overrides(self.base_params, config)

    def identity(self) -> dict[str, Any]:
        """What a resumed sweep must share with its first run (samples/concurrency may change).

        Searched keys are left out of the params so ``--apply`` does not orphan a sweep.
        """
        searched = {p.param for p in self.space}
        flat = flatten(self.base_params)
        return {
            "kind": self.kind,
            "objective": self.objective,
            "metric": self.metric,
            "mode": self.settings.mode,
            "epochs": self.settings.epochs,
            "seed": self.settings.seed,
            "asha": self.settings.asha.model_dump(),
            "space": [p.to_dict() for p in self.space],
            "params": {k: v for k, v in sorted(flat.items()) if k not in searched},
        }

    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_validation(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}.{key}: {err['msg']} (got {err.get('input')!r})")
    return "\n  ".join(lines)


def _allowed(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def load_sweep(
    raw_config: Mapping[str, Any] | None,
    kind: str,
    params: Mapping[str, Any],
    *,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    source: str = "sweep.yaml",
) -> Sweep:
    """Validate the ``kind`` sweep of a sweep.yaml mapping against raw params (params.yaml).

    Raises ConfigError for: an unknown sweep or objective, a metric the objective does not
    report, a bad space entry (see :mod:`pnoc.tune.space`), a searched key the objective
    ignores or the sweep itself sets (the epochs), a grace period beyond the epochs, invalid
    overrides.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown sweep '{kind}'; expected one of {sorted(KINDS)}")
    raw_config = dict(raw_config or {})
    unknown = set(raw_config) - {"defaults", *KINDS}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
    if kind not in raw_config:
        raise ConfigError(f"{source}: no '{kind}' section")
    merged = _deep_merge(raw_config.get("defaults") or {}, raw_config[kind] or {})
    if num_samples is not None:
        merged["num_samples"] = num_samples
    if max_concurrent is not None:
        merged["max_concurrent"] = max_concurrent
    try:
        settings = SweepSettings.model_validate(merged)
    except ValidationError as exc:
        detail = _format_validation(exc, kind)
        raise ConfigError(f"{source}: invalid sweep settings:\n  {detail}") from None
    info = KINDS[kind]
    objective = settings.objective or info.default_objective
    if objective not in info.objectives:
        raise ConfigError(
            f"{source}: {kind}.objective '{objective}' is unknown; "
            f"expected one of {sorted(info.objectives)}"
        )
    spec = info.objectives[objective]
    if settings.metric not in spec.metrics:
        raise ConfigError(
            f"{source}: {kind}.metric '{settings.metric}' is never reported by objective "
            f"'{objective}' (it reports: {', '.join(spec.metrics)})"
        )
    if settings.asha.grace_period > settings.epochs:
        raise ConfigError(
            f"{source}: {kind}.asha.grace_period {settings.asha.grace_period} exceeds the "
            f"{settings.epochs} epochs of a trial"
        )
    space = parse_space(settings.space)
    for p in space:
        if p.param == info.epochs_key:
            raise ConfigError(
                f"{source}: {p.param} is set by the sweep ({kind}.epochs, ASHA's time axis); "
                "it cannot be searched"
            )
        if not _allowed(p.param, spec.prefixes):
            raise ConfigError(
                f"{source}: {p.param} does not affect objective '{objective}' of the {kind} "
                f"sweep (it may vary: {', '.join(spec.prefixes)})"
            )
    overrides = dict(settings.overrides)
    for key in overrides:
        params_field(key)
        if key in {p.param for p in space}:
            raise ConfigError(f"{source}: {key} is both searched and fixed in overrides")
    overrides[info.epochs_key] = settings.epochs
    base = apply_overrides(params, overrides)
    parse_params(base, source=f"{source} ({kind}.overrides on params.yaml)")
    validate_space(space, base)
    _check_method_sections(space, base, source)
    return Sweep(kind, settings, objective, tuple(space), base)


def _check_method_sections(space: list[SearchParam], base: Mapping[str, Any], source: str) -> None:
    if any(p.param == "cam.method" for p in space):
        return
    method = get_dotted(base, "cam.method", "pnoc")
    for p in space:
        for prefix, methods in _METHOD_SECTIONS.items():
            if p.param.startswith(prefix) and method not in methods:
                raise ConfigError(
                    f"{source}: {p.param} has no effect with cam.method '{method}' (used by "
                    f"{', '.join(methods)}); set cam.method in overrides or search it"
                )


__all__ = [
    "CAM_METRICS",
    "KINDS",
    "PROXY_METRICS",
    "Sweep",
    "SweepSettings",
    "load_sweep",
]

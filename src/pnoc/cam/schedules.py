"""Loss-weight schedules driven by training progress p ∈ [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pnoc.errors import ConfigError


@dataclass(frozen=True)
class Ramp:
    """Linear from ``start`` (p = 0) to ``end`` (p = ``until``), then constant ``end``.

    ``until`` is a fraction of training in [0, 1]; ``until = 0`` means ``end`` throughout.
    Examples: α_p = Ramp(0, 4, 0.5); α_oc = Ramp(0.3, 1.0, 1.0); ow = Ramp(0, 1, 1.0).
    """

    start: float
    end: float
    until: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.until <= 1.0:
            raise ConfigError(f"ramp until: expected a fraction in [0, 1], got {self.until}")

    def __call__(self, progress: float) -> float:
        if self.until <= 0.0:
            return float(self.end)
        t = min(max(progress / self.until, 0.0), 1.0)
        return float(self.start + (self.end - self.start) * t)

    @classmethod
    def constant(cls, value: float) -> Ramp:
        return cls(value, value, 0.0)

    @classmethod
    def from_config(cls, cfg: Ramp | Mapping[str, Any] | Any) -> Ramp:
        """From a mapping or any object with ``start``, ``end`` and optional ``until``
        (e.g. ``pnoc.config.Ramp``)."""
        if isinstance(cfg, Ramp):
            return cfg
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        try:
            return cls(float(get("start")), float(get("end")), float(get("until", 1.0)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"ramp: expected start/end/until numbers, got {cfg!r}") from exc

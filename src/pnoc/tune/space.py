"""Search spaces from plain dicts: parsing, validation against ``Params``, conversion, overrides.

An entry is ``{param: "saliency.delta_fg", low: 0.2, high: 0.7, log: false}`` (a numeric range,
integers when the parameter is an integer) or ``{param: "cam.method", choices: [poc, pnoc]}``.
Every problem (unknown key, a section instead of a value, an empty or inverted range, a
non-positive log bound, a bound the parameter itself would refuse) is a
:class:`~pnoc.errors.ConfigError` raised before any trial runs.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pnoc.config import Params, parse_params
from pnoc.errors import ConfigError

ValueKind = Literal["int", "float", "bool", "str", "other"]


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter: a numeric range (``low``..``high``, both included) or choices."""

    param: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    kind: ValueKind = "float"

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def to_dict(self) -> dict[str, Any]:
        """The entry as it is written in sweep.yaml."""
        if self.choices is not None:
            return {"param": self.param, "choices": list(self.choices)}
        return {"param": self.param, "low": self.low, "high": self.high, "log": self.log}

    def bounds(self) -> list[Any]:
        """The values whose validity proves the whole entry valid (range ends or all choices)."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


# --------------------------------------------------------------------------------------------
# The Params model as a tree of dotted keys


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def params_field(key: str) -> FieldInfo:
    """The pydantic field of dotted ``key`` in :class:`pnoc.config.Params`; ConfigError if none.

    ``key`` must name a value (``saliency.delta_fg``), not a section (``saliency``).
    """
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"'{key}': expected a dotted params key such as 'saliency.delta_fg'")
    model: type[BaseModel] = Params
    for i, part in enumerate(parts):
        fields = model.model_fields
        where = ".".join(parts[:i]) or "params.yaml"
        if part not in fields:
            raise ConfigError(
                f"{key}: unknown parameter ('{part}' is not a key of {where}; "
                f"known: {', '.join(sorted(fields))})"
            )
        sub = _section_type(fields[part].annotation)
        if i == len(parts) - 1:
            if sub is not None:
                raise ConfigError(
                    f"{key}: is a section, not a value; search one of its keys "
                    f"({', '.join(f'{key}.{k}' for k in sorted(sub.model_fields))})"
                )
            return fields[part]
        if sub is None:
            raise ConfigError(f"{key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        model = sub
    raise AssertionError("unreachable")


def _flat_types(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _flat_types(a)]
    if origin is typing.Annotated:
        return _flat_types(typing.get_args(annotation)[0])
    return [annotation]


def value_kind(key: str) -> ValueKind:
    """What a parameter holds: ``int``, ``float``, ``bool``, ``str`` or ``other``."""
    found = [t for t in _flat_types(params_field(key).annotation) if t is not type(None)]
    if bool in found:
        return "bool"
    if int in found:
        return "int"
    if float in found:
        return "float"
    if str in found:
        return "str"
    return "other"


# --------------------------------------------------------------------------------------------
# Parsing and validation

_ENTRY_KEYS = {"param", "low", "high", "log", "choices"}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_entry(entry: Any, index: int = 0) -> SearchParam:
    """Parse one sweep.yaml entry (see the module docstring)."""
    where = f"space[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'param', got {entry!r}")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(_ENTRY_KEYS)}"
        )
    param = entry.get("param")
    if not isinstance(param, str):
        raise ConfigError(f"{where}: 'param' must be a dotted params key, got {param!r}")
    where = f"space[{index}] ({param})"
    kind = value_kind(param)  # unknown key or section -> ConfigError
    if "choices" in entry:
        if {"low", "high", "log"} & set(entry):
            raise ConfigError(f"{where}: give either 'choices' or 'low'/'high', not both")
        choices = entry["choices"]
        if not isinstance(choices, list | tuple) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: 'choices' holds duplicates: {list(choices)}")
        return SearchParam(param, choices=tuple(choices), kind=kind)
    if "low" not in entry or "high" not in entry:
        raise ConfigError(f"{where}: a range needs both 'low' and 'high' (or give 'choices')")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: a {kind} parameter cannot take a range; use 'choices'")
    low, high, log = entry["low"], entry["high"], entry.get("log", False)
    if not (_is_number(low) and _is_number(high)):
        raise ConfigError(
            f"{where}: 'low' and 'high' must be finite numbers, got {low!r}, {high!r}"
        )
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false, got {log!r}")
    if low >= high:
        raise ConfigError(f"{where}: empty or inverted range: low={low} must be < high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs positive bounds, got low={low}")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(
                f"{where}: an integer parameter needs integer bounds, got {low}, {high}"
            )
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    return SearchParam(param, low=low, high=high, log=log, kind=kind)


def parse_space(entries: Any) -> list[SearchParam]:
    """Parse a list of entries; refuse an empty space and a parameter listed twice."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"space: expected a non-empty list of entries, got {entries!r}")
    space = [parse_entry(e, i) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for p in space:
        if p.param in seen:
            raise ConfigError(f"space: '{p.param}' is listed twice")
        seen.add(p.param)
    return space


def validate_space(space: Sequence[SearchParam], base: Mapping[str, Any]) -> None:
    """Check every bound and choice against the Params model on top of ``base`` (raw params).

    E.g. ``saliency.delta_fg`` high 1.5 is refused here (a fraction), not in a trial.
    """
    for p in space:
        for value in p.bounds():
            try:
                parse_params(apply_overrides(base, {p.param: value}), source="sweep space")
            except ConfigError as exc:
                raise ConfigError(f"{p.param}: {value!r} is not a valid value:\n{exc}") from None


# --------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A new nested dict: ``params`` with each dotted key of ``overrides`` set (input untouched).

    Missing intermediate sections are created (``params.yaml`` may omit defaulted keys);
    whether a key exists in the model is :func:`params_field`'s business.
    """
    out = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def get_dotted(params: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value at dotted ``key`` of a nested dict, or ``default``."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


# --------------------------------------------------------------------------------------------
# Conversion


def to_optuna(space: Iterable[SearchParam]) -> dict[str, Any]:
    """Optuna distributions keyed by the dotted parameter names."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for p in space:
        if p.choices is not None:
            out[p.param] = CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            out[p.param] = IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            out[p.param] = FloatDistribution(float(p.low), float(p.high), log=p.log)
    return out


def to_ray(space: Iterable[SearchParam]) -> dict[str, Any]:
    """A Ray Tune ``param_space`` (flat, dotted keys); OptunaSearch converts it to ``to_optuna``.

    Ray's integer domains exclude ``upper``, so ``high + 1`` keeps ``high`` reachable.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for p in space:
        if p.choices is not None:
            out[p.param] = tune.choice(list(p.choices))
        elif p.kind == "int":
            fn = tune.lograndint if p.log else tune.randint
            out[p.param] = fn(int(p.low), int(p.high) + 1)
        else:
            fn = tune.loguniform if p.log else tune.uniform
            out[p.param] = fn(float(p.low), float(p.high))
    return out


__all__ = [
    "SearchParam",
    "apply_overrides",
    "get_dotted",
    "params_field",
    "parse_entry",
    "parse_space",
    "to_optuna",
    "to_ray",
    "validate_space",
    "value_kind",
]

"""Values written into params.yaml, nothing else changed (a sweep's winners, a recipe)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pnoc.config import parse_params
from pnoc.io import write_text


def set_params(params_path: Path, values: Mapping[str, Any], *, origin: str) -> list[str]:
    """Write ``values`` (dotted keys) into params.yaml, changing nothing else.

    A ruamel.yaml round trip (installed with DVC) keeps comments, order, flow style and the
    formatting of untouched values; a key params.yaml omits (a defaulted one) is added to its
    section. The result is validated before the file is replaced (an error names ``origin``, what
    the values are, e.g. "the sweep's winners"). Returns ``key: old -> new`` per changed key.
    """
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(
        type(None), lambda r, d: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = rt.load(params_path.read_text())
    changes = []
    for key, value in values.items():
        parts = key.split(".")
        node = doc
        for part in parts[:-1]:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        old = node.get(parts[-1], "<default>")
        if parts[-1] in node and _same(old, value):
            continue  # untouched: keep its exact spelling
        node[parts[-1]] = _flow(value)
        changes.append(f"{key}: {old} -> {value}")
    buf = io.StringIO()
    rt.dump(doc, buf)
    new_text = buf.getvalue()
    parse_params(yaml.safe_load(new_text), source=f"{params_path} (with {origin})")
    write_text(params_path, new_text)
    return changes


def _same(old: Any, new: Any) -> bool:
    """Equal values of equal kinds (1 and 1.0, True and 1 differ; ruamel's ScalarFloat is a
    float); lists item by item."""
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
    for kind in (bool, int, float, str):
        if isinstance(old, kind) or isinstance(new, kind):
            return isinstance(old, kind) and isinstance(new, kind) and old == new
    return old == new and type(old) is type(new)


def _flow(value: Any) -> Any:
    """A list as params.yaml writes them, on one line (``[0.5, 1.0]``)."""
    if not isinstance(value, list):
        return value
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(value)
    seq.fa.set_flow_style()
    return seq

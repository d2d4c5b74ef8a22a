"""``--apply``: the sweep's winners written into params.yaml, nothing else changed."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pnoc.config import parse_params
from pnoc.io import write_text


def apply_best(params_path: Path, values: Mapping[str, Any]) -> list[str]:
    """Write ``values`` (dotted keys) into params.yaml, changing nothing else.

    A ruamel.yaml round trip (installed with DVC) keeps comments, order, flow style and the
    formatting of untouched values; a key params.yaml omits (a defaulted one) is added to its
    section. The result is validated before the file is replaced. Returns ``key: old -> new``.
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
        if parts[-1] in node and old == value and type(old) is type(value):
            continue  # untouched: keep its exact spelling
        node[parts[-1]] = value
        changes.append(f"{key}: {old} -> {value}")
    buf = io.StringIO()
    rt.dump(doc, buf)
    new_text = buf.getvalue()
    parse_params(yaml.safe_load(new_text), source=f"{params_path} (with the sweep's winners)")
    write_text(params_path, new_text)
    return changes

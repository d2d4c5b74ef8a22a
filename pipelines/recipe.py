"""Recipes: named param sets (``pipelines/recipes/<name>.yaml``) written into params.yaml.

A recipe file holds a ``description``, optionally ``extends: [other, ...]`` (applied first, in
order; names starting with ``_`` are fragments that ``pnoc recipe list`` does not show) and
``params``: a nested mapping shaped like params.yaml. Resolved, a recipe is a set of dotted keys
(``cam.pnoc.mask_threshold``) with their values; every key must exist in params.yaml's schema.

Applying one (``pnoc recipe apply voc12``) writes exactly those keys into params.yaml, keeping
every comment and untouched line, so ``git diff``, ``dvc params diff``, ``dvc exp show`` and the
stages' MLflow params show what it changed; ``pnoc recipe args voc12`` prints the same values as
``-S key=value`` options for ``dvc exp run``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pnoc.config import Params, flatten
from pnoc.errors import ConfigError
from pnoc_pipelines.params_file import set_params

RECIPES_DIR = Path(__file__).parent / "recipes"
_FILE_KEYS = {"description", "extends", "params"}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    values: dict[str, Any]  # dotted params key -> value, in file order


def available() -> list[str]:
    """The recipes ``pnoc recipe apply`` accepts (fragments ``_*`` left out), sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def load(name: str) -> Recipe:
    """Resolve recipe ``name``: its ``extends`` first, then its own ``params`` on top."""
    values = _resolve(name, ())
    known = set(flatten(Params()))
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(
            f"recipe '{name}': unknown params key(s) {', '.join(unknown)} "
            "(every key must exist in params.yaml)"
        )
    return Recipe(name, str(_read(name).get("description", "")), values)


def apply(name: str, params_path: Path) -> list[str]:
    """Write recipe ``name`` into ``params_path``; returns ``key: old -> new`` per changed key.

    The result is validated before the file is replaced, so a recipe whose dataset folder does
    not exist yet stops here naming ``data.root``, and params.yaml stays as it was.
    """
    recipe = load(name)
    return set_params(params_path, recipe.values, origin=f"recipe {name}")


def set_args(name: str) -> list[str]:
    """Recipe ``name`` as ``dvc exp run`` options: ``-S``, ``++key=value``, ... (DVC's Hydra
    override syntax; values without spaces, so the shell's word splitting of
    ``$(pnoc recipe args NAME)`` keeps them)."""
    args: list[str] = []
    for key, value in load(name).values.items():
        text = json.dumps(value, separators=(",", ":"))
        if isinstance(value, str) and " " not in value and yaml.safe_load(value) == value:
            text = value  # a plain word reads back as itself: no quotes needed
        args += ["-S", f"++{key}={text}"]  # ++: set the key whether params.yaml has it or not
    return args


def _path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"recipe '{name}' does not exist; recipes: {', '.join(available())} "
            f"(files in {RECIPES_DIR})"
        )
    return path


def _read(name: str) -> dict[str, Any]:
    path = _path(name)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with 'description' and 'params' mappings")
    extra = set(doc) - _FILE_KEYS
    if extra:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(extra))}; expected {sorted(_FILE_KEYS)}"
        )
    return doc


def _resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
    if name in chain:
        raise ConfigError(f"recipe '{name}': 'extends' loops ({' -> '.join((*chain, name))})")
    doc = _read(name)
    parents = doc.get("extends") or []
    if isinstance(parents, str):
        parents = [parents]
    values: dict[str, Any] = {}
    for parent in parents:
        values.update(_resolve(str(parent), (*chain, name)))
    values.update(_leaves(doc.get("params") or {}))
    return values


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted leaf keys; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, f"{name}."))
        else:
            out[name] = value
    return out

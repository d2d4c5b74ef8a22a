"""dvc.yaml is each stage's contract: what its code reads and writes must be what it declares.

Checked statically here (paths, library code) and at run time by ``stage()``, which hands a
stage only the params keys dvc.yaml lists (the end-to-end `dvc repro` then fails on any other).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pnoc.config import parse_params
from pnoc.errors import ConfigError
from pnoc_pipelines.common import DeclaredParams, declared_params, stage_contract
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

# Imported by stages for what they do, not what they compute: errors, atomic writes, params
# validation (the values come from params.yaml, which DVC tracks) and the run settings.
NOT_COMPUTING = {"pnoc.errors", "pnoc.io", "pnoc.config", "pnoc.engine.Runtime"}


def _resolve(entry: str) -> str:
    return entry.replace("${data.root}", PARAMS["data"]["root"])


def _outputs(contract: dict[str, Any]) -> set[str]:
    outs = set()
    for key in ("outs", "metrics", "plots"):
        for entry in contract.get(key) or []:
            outs.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return outs


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] == "pnoc":
        base = REPO / "src" / Path(*parts)
    elif parts[0] == "pnoc_pipelines":
        base = REPO / "pipelines" / Path(*parts[1:])
    else:
        return None
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """What ``path`` imports from the project (anywhere in the file), as ``module.name``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub)
    return {m for m in found if m.split(".")[0] in ("pnoc", "pnoc_pipelines")}


def _stage_paths(module: Path) -> set[str]:
    """The paths a stage module uses: ``paths.NAME`` (:mod:`pnoc_pipelines.paths`) and its own
    module-level ``Path`` values (the embedded dataset's folder)."""
    from pnoc_pipelines import paths

    used = {
        str(getattr(paths, node.attr))
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "paths"
    }
    namespace = vars(importlib.import_module(f"pnoc_pipelines.{module.stem}"))
    return used | {str(v) for k, v in namespace.items() if k.isupper() and isinstance(v, Path)}


def _stage_module(name: str) -> Path:
    cmd = DVC[name]["cmd"]
    prefix = "python -m pnoc_pipelines."
    assert cmd.startswith(prefix), f"{name}: cmd {cmd!r} does not run a pnoc_pipelines module"
    path = _module_path("pnoc_pipelines." + cmd.removeprefix(prefix).strip())
    assert path is not None, f"{name}: {cmd!r} names no module"
    return path


@pytest.mark.parametrize("name", sorted(DVC))
def test_a_stage_declares_the_code_it_runs(name):
    deps = [_resolve(d) for d in DVC[name].get("deps") or []]
    module = _stage_module(name)
    sources = [module]
    step = REPO / "src" / "pnoc" / "steps" / f"{module.stem}.py"
    if step.is_file():
        sources.append(step)
    for source in sources:
        assert _covered(str(source.relative_to(REPO)), deps), f"{name}: {source} not in deps"
        for imported in sorted(_imports(source)):
            if imported.startswith("pnoc_pipelines.") or any(
                imported == m or imported.startswith(m + ".") for m in NOT_COMPUTING
            ):
                continue
            target = _module_path(imported) or _module_path(imported.rpartition(".")[0])
            assert target is not None, f"{source}: cannot resolve {imported}"
            rel = str(target.relative_to(REPO))
            assert _covered(rel, deps), (
                f"stage '{name}': {source.relative_to(REPO)} imports {imported} ({rel}), which "
                f"dvc.yaml does not list under stages.{name}.deps"
            )


@pytest.mark.parametrize("name", sorted(DVC))
def test_a_stage_reads_and_writes_the_paths_it_declares(name):
    contract = DVC[name]
    deps = [_resolve(d) for d in contract.get("deps") or []]
    outs = _outputs(contract)
    consts = _stage_paths(_stage_module(name))
    for const in consts:
        assert const in outs or _covered(const, deps), (
            f"stage '{name}' uses {const}, which dvc.yaml lists neither as a dep nor an output"
        )
    for out in outs:
        assert out in consts, f"stage '{name}': dvc.yaml output {out} is not written by its code"


@pytest.mark.parametrize("name", sorted(DVC))
def test_declared_params_exist(name):
    params = parse_params(PARAMS)
    for key in declared_params(name, REPO / "dvc.yaml"):
        node: Any = params
        for part in key.split("."):
            assert hasattr(node, part), f"stage '{name}' declares unknown params key '{key}'"
            node = getattr(node, part)


def test_a_stage_sees_only_its_declared_params():
    params = parse_params(PARAMS)
    view: Any = DeclaredParams(params, "saliency", ["base", "cams.splits", "saliency"])
    assert view.base == params.base and view.saliency.threshold == params.saliency.threshold
    assert view.cams.splits == params.cams.splits
    with pytest.raises(ConfigError, match=r"'cams\.eval_split'.*stages\.saliency\.params"):
        _ = view.cams.eval_split
    with pytest.raises(ConfigError, match="'oc'"):
        _ = view.oc
    assert stage_contract("saliency", REPO / "dvc.yaml")["cmd"].endswith(".saliency")
